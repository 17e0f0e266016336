"""Replay protection: `<agent home>/state.json` records, per model name, the highest sequence ever
activated on this device.

`record_activation` is called by the fleet `activate` and `rollback` verbs; the verifier
(device_agents.bundle) calls `check_not_replayed`, which refuses an older sequence unless it is the
model's current bundle (or, with allow_rollback, one this device activated before).
"""

from __future__ import annotations

import fcntl
import json
import os
import time

from device_agents.errors import AgentError
from device_agents.protocol import agent_home

HISTORY_LENGTH = 20  # activations remembered per model (what a rollback may return to)


def state_path(home: str) -> str:
    return os.path.join(home, "state.json")


def read_state(home: str | None = None) -> dict:
    path = state_path(agent_home(home))
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return {"schema_version": 1, "models": {}}
    except ValueError:
        raise AgentError("bad_state", f"{path} is not valid JSON; restore it (it guards against replayed bundles)")
    state.setdefault("models", {})
    return state


def check_not_replayed(manifest: dict, home: str | None = None, allow_rollback: bool = False) -> None:
    name = manifest.get("name")
    seq = manifest.get("sequence")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise AgentError("bad_manifest", "manifest has no integer sequence (needed for replay protection)")
    entry = read_state(home)["models"].get(name)
    if not entry or seq > entry["sequence"]:
        return
    bid = manifest.get("bundle_id")
    history = {h["bundle_id"]: h["sequence"] for h in entry.get("history", [])}
    if seq == entry["sequence"]:
        if bid == entry.get("sequence_bundle_id", entry.get("bundle_id")) or history.get(bid) == seq:
            return
        raise AgentError("replayed", f"model {name!r}: another bundle with sequence {seq} was already activated; "
                                     f"re-package (sequences must increase)")
    if bid == entry.get("bundle_id") or (allow_rollback and bid in history):
        return
    raise AgentError("replayed", f"model {name!r}: bundle sequence {seq} is older than the activated {entry['sequence']} "
                                 f"(bundle {entry.get('sequence_bundle_id', entry.get('bundle_id'))}); refusing a replayed bundle")


def record_activation(manifest: dict, home: str | None = None, rollback: bool = False) -> dict:
    """Record `manifest` as the active bundle of its model (call after verify_bundle passed).

    The recorded sequence never goes down, so a rollback still refuses bundles that were never
    activated here. Returns the model's new state entry. Atomic and locked against a concurrent agent.
    """
    home = agent_home(home)
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".state.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_not_replayed(manifest, home, allow_rollback=rollback)
        state = read_state(home)
        name = manifest["name"]
        old = state["models"].get(name) or {}
        history = [h for h in old.get("history", []) if h["bundle_id"] != manifest["bundle_id"]]
        history = (history + [{"bundle_id": manifest["bundle_id"], "sequence": manifest["sequence"]}])[-HISTORY_LENGTH:]
        newest = not old or manifest["sequence"] >= old["sequence"]
        entry = {"sequence": manifest["sequence"] if newest else old["sequence"],
                 "sequence_bundle_id": manifest["bundle_id"] if newest else old.get("sequence_bundle_id"),
                 "bundle_id": manifest["bundle_id"], "activated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "previous": old.get("bundle_id"), "history": history}
        state["models"][name] = entry
        tmp = state_path(home) + ".part"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_path(home))
    return entry
