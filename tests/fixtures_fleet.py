"""Fleet test fixtures: signed bundles (good, bad, big), sshd devices (also inside network
namespaces with veth links) and a fast-failing SSH connect for rollouts, plus the helpers fleet
tests compare devices with (device_status, current_id, assert_consistent).

The lab pieces live in kit.testbed (bundles.make_bundle, netns.NetnsLink / netns_sshd,
delay_proxy.DelayProxy, sshd.SshdFactory) and are re-exported here for test imports. Everything a
test creates (namespaces, veths, nftables rules, qdiscs, servers, proxies) is removed in a
`finally`, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from kit.testbed.bundles import make_bundle
from kit.testbed.delay_proxy import DelayProxy
from kit.testbed.netns import NetnsLink, NetnsSshd, netns_refusal, netns_sshd, sweep_stale_namespaces
from kit.testbed.sshd import SshdFactory

__all__ = ["make_bundle", "DelayProxy", "NetnsLink", "NetnsSshd", "netns_refusal", "netns_sshd",
           "sweep_stale_namespaces", "fast_connect", "fast_options", "device_status", "current_id",
           "assert_consistent", "python_env", "edgekit_cmd"]


# --- signing + bundles --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory):
    """A signing key for fleet bundles (devices trust it through the transport's key install)."""
    if not os.environ.get("EDGEKIT_CONFIG_DIR"):
        os.environ["EDGEKIT_CONFIG_DIR"] = str(tmp_path_factory.mktemp("edgekit-config"))
    from kit.package.signing import ensure_keys

    return ensure_keys()


@pytest.fixture(scope="session")
def fleet_bundles(fleet_keys, tmp_path_factory):
    """v1 -> v2 of model 'tiny' (good), v3 of 'tiny' whose reference check fails, and 'big' (~1.5 MB)."""
    root = tmp_path_factory.mktemp("fleet-bundles")
    out = {}
    for key, kw in (("v1", dict(seed=1)), ("v2", dict(seed=2)), ("bad", dict(seed=3, break_reference=True)),
                    ("big", dict(seed=4, hidden=1500))):
        out[key] = make_bundle(root / key, "big" if key == "big" else "tiny", **kw)
    # A second version of 'big' with the same model bytes (a new signed manifest: a new bundle_id).
    from kit.package.bundle import write_bundle

    big = out["big"]
    out["big2"] = write_bundle(root / "big2", big.model_file, "big", np.load(big.path / "reference_input.npy"),
                               np.load(big.path / "reference_output.npy"))
    return out


# --- SSH connect with short deadlines -------------------------------------------------------------

def fast_connect(entry, **deadlines):
    """SshDevice with deadlines short enough for fault tests (a dead link is noticed in ~3 s)."""
    from kit.devices import Deadlines, SshDevice

    d = {"connect_s": 10, "command_s": 90, "io_idle_s": 5, "transfer_s": 60, **deadlines}
    return SshDevice(entry, deadlines=Deadlines(**d), allow_agent=False)


def fast_options(**kw):
    from kit.fleet.rollout import RolloutOptions

    base = dict(health_runs=3, health_warmup=1, retries=4, backoff_s=0.3, backoff_max_s=2.0, agent_timeout_s=60)
    return RolloutOptions(**{**base, **kw})


def device_status(entry, model: str) -> dict:
    """What the device runs now, read over a fresh connection (the ground truth a test compares to)."""
    with fast_connect(entry) as dev:
        doc = dev.run_agent(["status", "--name", model], timeout=60)
    assert doc["ok"], doc
    return doc["result"]["models"].get(model) or {}


def current_id(entry, model: str) -> str | None:
    return (device_status(entry, model).get("current") or {}).get("bundle_id")


def assert_consistent(result, entries, model: str, old: dict[str, str | None]) -> None:
    """Every device runs the new or its previous version (complete), and the record says which."""
    by_name = {d.device: d for d in result.devices}
    for e in entries:
        st = device_status(e, model)
        cur = (st.get("current") or {})
        if cur:
            assert cur["present"], f"{e.name}: current points at a missing/partial version: {st}"
            with fast_connect(e) as dev:  # every file of the running version matches its manifest
                doc = dev.run_agent(["verify", "--bundle", cur["path"]], timeout=60)
            assert doc["ok"], f"{e.name}: the running version does not verify: {doc}"
        now = cur.get("bundle_id")
        assert now in (result.bundle_id, old[e.name]), f"{e.name} runs {now}, neither new nor its previous"
        label = result.runs(by_name[e.name])
        assert label in ("new", "previous"), f"{e.name}: record does not know what it runs: {by_name[e.name]}"
        assert (now == result.bundle_id) == (label == "new"), f"{e.name}: record says {label}, device runs {now}"
        if label == "previous" and by_name[e.name].running_bundle_id is not None:
            assert (by_name[e.name].running_bundle_id or None) == now


@pytest.fixture
def fleet_sshd(tmp_path, fleet_keys):
    """SshdFactory for fleet tests (after the signing key exists, so devices trust it)."""
    with SshdFactory(tmp_path / "sshd", on_missing=pytest.skip) as f:
        yield f


# --- network namespaces ---------------------------------------------------------------------------

@pytest.fixture
def netns_ok():
    why = netns_refusal()
    if not why:
        sweep_stale_namespaces()
    if why:
        print(f"SKIP network-namespace fault test: {why}")
        pytest.skip(why)


@pytest.fixture
def netns_device(tmp_path, fleet_keys, netns_ok):
    """Factory: netns_device(name) -> (NetnsLink, NetnsSshd). All removed at teardown."""
    made: list = []

    def make(name: str):
        link = NetnsLink().__enter__()
        made.append(link)
        server = netns_sshd(tmp_path / name, name, link)
        made.append(server)
        server.start()
        return link, server

    try:
        yield make
    finally:
        for thing in reversed(made):
            with contextlib.suppress(Exception):
                thing.close() if isinstance(thing, NetnsLink) else thing.stop()


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def edgekit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kit", *args]
