"""`collect(export_dir)`: the hosts' agent JSON, written by the exported play into
<export>/results/<host>.json, stored in the results store the way a native rollout is stored: one
rollout record (kit.fleet.rollout_state: rollouts + rollout_devices, `edgekit status`/`rollback`
read it) and one measurement per health gate (kit.results.store, run kind "ansible-rollout").

Collected records move to <export>/results/collected-<rollout id>/, so collecting twice never
counts one play twice. A host of the export without a record is `skipped` (the play stopped
before its batch, or it was unreachable: Ansible's own recap says which).
"""

from __future__ import annotations

import json
from pathlib import Path

from kit.ansible.export import EXPORT_FILE, ROLE
from kit.devices.bench import Measurement, measurement_from_result
from kit.errors import EdgeKitError
from kit.fleet import rollout_state as rs

_STATUS = {"updated": rs.UPDATED, "unchanged": rs.UNCHANGED, "failed": rs.FAILED}


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeKitError(f"{path}: not a readable JSON record ({e}); run the exported playbook again") from None
    if not isinstance(doc, dict):
        raise EdgeKitError(f"{path}: not a host record (a JSON object); run the exported playbook again")
    return doc


def measurement_of(device: str, r: dict) -> Measurement:
    """A kit.devices.bench.Measurement from the agent's bench result (as kit.devices.bench.bench makes it)."""
    return measurement_from_result(device, r)


def _agent_error(rec: dict) -> str | None:
    for verb in ("gate", "activate", "status"):
        doc = (rec.get("agent") or {}).get(verb) or {}
        if isinstance(doc, dict) and doc.get("ok") is False:
            err = doc.get("error") or {}
            return f"{verb if verb != 'gate' else 'health gate'} failed [{err.get('code')}]: {err.get('message')}"
    return None


def _device_fields(rec: dict, bundle_id: str) -> dict:
    outcome = rec.get("outcome")
    if outcome not in _STATUS:
        raise EdgeKitError(f"host {rec.get('host')}: record outcome {outcome!r} is not updated/unchanged/failed")
    previous = rec.get("previous_bundle_id") or None
    fields = {"stage": "done", "status": _STATUS[outcome], "previous_bundle_id": previous}
    if outcome == "failed":
        back = ((rec.get("agent") or {}).get("rollback") or {})
        why = _agent_error(rec) or rec.get("error") or "failed"
        if isinstance(back, dict) and back.get("ok"):
            current = (back.get("result") or {}).get("current")
            fields.update(running_bundle_id=current or "", error=f"{why}; rolled back to {current or 'no version'}")
        else:
            fields.update(running_bundle_id=None, error=f"{why}; rollback not confirmed")
    else:
        fields.update(running_bundle_id=bundle_id, error=None)
    return fields


def collect(export_dir: str | Path, store_path: str | Path | None = None) -> dict:
    """Store the play's host records; a summary dict (rollout_id, status, run_id, devices, measurements)."""
    from kit.config import results_path
    from kit.package.bundle import Bundle

    out = Path(export_dir)
    meta_path = out / EXPORT_FILE
    if not meta_path.is_file():
        raise EdgeKitError(f"{out}: no {EXPORT_FILE}; give the folder written by 'edgekit ansible export'")
    meta = _load(meta_path)
    records = {p.stem: _load(p) for p in sorted((out / "results").glob("*.json"))}
    if not records:
        raise EdgeKitError(f"{out / 'results'}: no host records yet; run the playbook first (edgekit ansible run {out})")
    unknown = sorted(set(records) - set(meta["hosts"]))
    if unknown:
        raise EdgeKitError(f"{out / 'results'}: record(s) of {', '.join(unknown)}, not hosts of this export; remove them")
    bundle = Bundle.load(out / "roles" / ROLE / "files" / "bundle.tar")  # its manifest only
    bundle_id = meta["bundle_id"]
    with rs.RolloutState(store_path or results_path()) as state:
        rid = state.create(bundle_id, meta["model_name"], meta["group"], meta["hosts"],
                           {**meta.get("options", {}), "engine": "ansible",
                            "max_fail_percentage": meta.get("max_fail_percentage")})
        store = state.store
        run_id = store.start_run("ansible-rollout", note=f"rollout {rid} of {bundle_id} to {meta['group']} via Ansible",
                                 options={"export": str(out.resolve())})
        stored = 0
        for host in meta["hosts"]:
            rec = records.get(host)
            if rec is None:
                state.update_device(rid, host, status=rs.SKIPPED,
                                    error="no record: the play stopped before this host's batch, or it was unreachable")
                continue
            state.update_device(rid, host, **_device_fields(rec, bundle_id))
            gate = (rec.get("agent") or {}).get("gate")
            if isinstance(gate, dict) and gate.get("ok"):
                store.record(run_id, bundle, measurement_of(host, gate["result"]),
                             bundle.manifest.get("variant") or meta["model_name"])
                stored += 1
        store.finish_run(run_id)
        final = state.get(rid)
        failed = any(d.status in rs.FAILURE_STATUSES or d.status == rs.SKIPPED for d in final.devices)
        state.set_status(rid, rs.STOPPED if failed else rs.SUCCEEDED, finished=True)
        final = state.get(rid)
    done = out / "results" / f"collected-{rid}"
    done.mkdir()
    for host in records:
        (out / "results" / f"{host}.json").rename(done / f"{host}.json")
    return {"rollout_id": rid, "status": final.status, "bundle_id": bundle_id, "group": meta["group"], "run_id": run_id,
            "measurements": stored, "devices": [d.to_dict() for d in final.devices]}
