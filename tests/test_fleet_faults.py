"""Rollouts over faulty networks: real sshd devices inside network namespaces made by the test
(veth pairs, addresses inside the namespaces only). Slow link: tbf; loss: nftables
`numgen random mod 100 < N drop` inside the namespace; latency: a delaying TCP proxy; a dropped
link: the host end of the veth set down mid-push. Skipped only where `ip netns` is refused."""

from __future__ import annotations

import threading

import pytest

from kit.fleet import rollout_state as rs
from kit.fleet import rollout
from tests.fixtures_fleet import DelayProxy, assert_consistent, current_id, fast_connect, fast_options

pytestmark = pytest.mark.timeout(300)


def test_link_dropped_mid_push(netns_device, fleet_bundles, tmp_path):
    """A ~1.6 MB push over an 8 Mbit/s link; the link goes down 0.4 s into the push and comes back
    8 s later, after the transfer's deadline (3 s + 512 KB/s) expired. The stalled transfer is
    abandoned (its .part folder never becomes visible), the push is retried after reconnecting,
    and the device ends on the new version. (A shorter outage is simply ridden out by TCP.)"""
    link, server = netns_device("nsdev0")
    entry = server.entry()
    store = tmp_path / "results.db"
    big, big2 = fleet_bundles["big"], fleet_bundles["big2"]
    assert rollout(big, [entry], "ns", options=fast_options(), store_path=store, connect=fast_connect).status == rs.SUCCEEDED
    old = {entry.name: big.bundle_id}
    link.slow("8mbit")
    dropped = threading.Event()
    timers = []

    def on_progress(d):
        if d.stage == "push" and not dropped.is_set():
            dropped.set()
            timers.extend([threading.Timer(0.4, link.down), threading.Timer(8.4, link.up)])
            for t in timers:
                t.start()

    try:
        r = rollout(big2, [entry], "ns", options=fast_options(retries=6), store_path=store, progress=on_progress,
                    connect=lambda e: fast_connect(e, transfer_s=3, min_rate_bps=512 * 1024))
    finally:
        for t in timers:
            t.join()
        link.up()
    d = r.devices[0]
    assert dropped.is_set()
    assert d.attempts >= 1, "the push finished before the link went down: the fault was not exercised"
    assert r.status == rs.SUCCEEDED and d.status == rs.UPDATED, r.to_dict()
    assert_consistent(r, [entry], "big", old)


def test_link_down_for_good_mid_push_leaves_previous(netns_device, fleet_bundles, tmp_path):
    """The link goes down mid-push and stays down: retries give up, the device keeps running
    its previous version (never a partial one), and the record says so."""
    link, server = netns_device("nsdev1")
    entry = server.entry()
    store = tmp_path / "results.db"
    big, big2 = fleet_bundles["big"], fleet_bundles["big2"]
    assert rollout(big, [entry], "ns", options=fast_options(), store_path=store, connect=fast_connect).status == rs.SUCCEEDED
    link.slow("8mbit")
    timer = None

    def on_progress(d):
        nonlocal timer
        if d.stage == "push" and timer is None:
            timer = threading.Timer(0.4, link.down)
            timer.start()

    try:
        r = rollout(big2, [entry], "ns", options=fast_options(retries=1, max_failures=0), store_path=store,
                    connect=lambda e: fast_connect(e, transfer_s=3, min_rate_bps=512 * 1024), progress=on_progress)
    finally:
        if timer:
            timer.join()
        link.up()
    d = r.devices[0]
    assert d.status == rs.UNREACHABLE and d.stage == "push" and r.runs(d) == "previous", r.to_dict()
    assert r.status == rs.STOPPED
    assert_consistent(r, [entry], "big", {entry.name: big.bundle_id})


def test_unreachable_from_start_blackholed(netns_device, fleet_sshd, fleet_bundles, tmp_path):
    """A device whose link is down before the rollout starts (connects time out, no refusal)."""
    link, server = netns_device("nsdev2")
    dead = server.entry()
    live = fleet_sshd(1)[0]
    link.down()
    try:
        r = rollout(fleet_bundles["v1"], [live, dead], "mixed", options=fast_options(max_failures=1, retries=1),
                    store_path=tmp_path / "results.db", connect=fast_connect)
    finally:
        link.up()
    by = {d.device: d for d in r.devices}
    assert r.status == rs.SUCCEEDED and r.failures == 1
    assert by[live.name].status == rs.UPDATED
    assert by[dead.name].status == rs.UNREACHABLE and r.runs(by[dead.name]) == "previous"
    assert by[dead.name].stage == "status" and "unreachable" in by[dead.name].error
    assert current_id(dead, "tiny") is None  # never touched
    assert_consistent(r, [live, dead], "tiny", {live.name: None, dead.name: None})


def test_rollout_through_200ms_delay_and_10pct_loss(netns_device, fleet_bundles, tmp_path):
    """A device behind 200 ms of added round-trip delay (100 ms each way, delaying TCP proxy) and
    10% packet loss (nftables in its namespace) still completes a rollout."""
    link, server = netns_device("nsdev3")
    direct = server.entry()
    store = tmp_path / "results.db"
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    assert rollout(v1, [direct], "ns", options=fast_options(), store_path=store, connect=fast_connect).status == rs.SUCCEEDED
    link.loss(10)
    proxy = DelayProxy((server.addr, server.port), delay_s=0.1).start()
    try:
        server.set_known_host("127.0.0.1", proxy.port)
        slow = server.entry(host="127.0.0.1", port=proxy.port)
        r = rollout(v2, [slow], "ns", options=fast_options(retries=5), store_path=store, connect=fast_connect)
        assert r.status == rs.SUCCEEDED and r.devices[0].status == rs.UPDATED, r.to_dict()
    finally:
        proxy.stop()
    # What the device runs is checked over a clean direct link: the check's own short deadlines are
    # not what this test is about (on a loaded machine they timed out through the slow link).
    link.lossless()
    server.set_known_host(server.addr, server.port)
    assert direct.name == slow.name
    assert_consistent(r, [direct], "tiny", {direct.name: v1.bundle_id})
