"""`edgekit rollout|status|rollback --json` print exactly one JSON document on stdout (run in-process
against real sshd devices on 127.0.0.1); the live table goes to stderr."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fixtures_fleet import current_id

pytestmark = pytest.mark.timeout(300)


def _inventory(tmp_path, entries):
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    return ["--inventory", str(inv)]


def _json(main, capsys, *args) -> tuple[int, object]:
    rc = main(list(args))
    return rc, json.loads(capsys.readouterr().out)  # the whole of stdout is one document


def test_rollout_status_rollback_json(fleet_sshd, fleet_bundles, tmp_path, capsys, monkeypatch):
    from kit.cli import main

    entries = fleet_sshd(2)
    inv = _inventory(tmp_path, entries)
    monkeypatch.setenv("EDGEKIT_RESULTS", str(tmp_path / "results.db"))
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]

    for b in (v1, v2):
        rc, doc = _json(main, capsys, "rollout", str(b.path), "--group", "lab", "--health-runs", "2", "--json", *inv)
        assert rc == 0 and doc["status"] == "succeeded" and doc["bundle_id"] == b.bundle_id and doc["failures"] == 0
        assert [(d["device"], d["status"], d["runs"]) for d in doc["devices"]] == \
            [(e.name, "updated", "new") for e in entries]
        assert isinstance(doc["rollout_id"], int) and doc["model_name"] == "tiny" and doc["group"] == "lab"

    rc, rows = _json(main, capsys, "status", "lab", "--json", *inv)
    assert rc == 0 and [r["device"] for r in rows] == [e.name for e in entries]
    assert all(r["ok"] and r["models"]["tiny"]["current"]["bundle_id"] == v2.bundle_id
               and r["models"]["tiny"]["previous"]["bundle_id"] == v1.bundle_id for r in rows)

    rc, rows = _json(main, capsys, "rollback", "--group", "lab", "--json", *inv)
    assert rc == 0 and all(r["ok"] and r["changed"] and r["current"] == v1.bundle_id for r in rows), rows

    # A stopped rollout is still one document, and exit 1.
    rc, doc = _json(main, capsys, "rollout", str(fleet_bundles["bad"].path), "--group", "lab", "--health-runs", "2",
                    "--json", *inv)
    assert rc == 1 and doc["status"] == "stopped" and doc["failures"] == 1
    assert all(current_id(e, "tiny") == v1.bundle_id for e in entries)


def test_status_json_with_an_unreachable_device(fleet_sshd, tmp_path, capsys):
    from kit.cli import main

    entries = fleet_sshd(2)
    inv = _inventory(tmp_path, entries)
    fleet_sshd.server(entries[1].name).stop()
    try:
        rc, rows = _json(main, capsys, "status", "lab", "--name", "tiny", "--json", *inv)
    finally:
        fleet_sshd.server(entries[1].name).start()
    assert rc == 1
    assert rows[0] == {"device": entries[0].name, "ok": True, "models": {}}
    assert rows[1]["device"] == entries[1].name and rows[1]["ok"] is False and rows[1]["error"]
