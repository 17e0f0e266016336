"""The health gate's decision and where its latency budget comes from (pure functions)."""

from __future__ import annotations

import pytest

from kit.errors import AgentProtocolError, AgentRefused, DeviceUnreachable, EdgeKitError, HostKeyRejected, LinkLost
from kit.fleet.group import sshd_key
from kit.fleet.health import health_gate, latency_budget
from kit.fleet.options import RolloutOptions
from kit.fleet.session import retryable
from kit.package.bundle import Bundle


def _result(passed=True, p50=2.0):
    return {"reference_check": {"passed": passed, "max_abs_err": 0.5, "atol": 0.01}, "latency": {"p50_ms": p50, "p90_ms": p50 * 2}}


def test_gate_passes_and_fails_for_the_right_reason():
    assert health_gate(_result(), None, "p50_ms") is None
    assert health_gate(_result(), 5.0, "p50_ms") is None
    assert "reference check failed" in health_gate(_result(passed=False), 5.0, "p50_ms")
    assert "p90_ms 4.000 ms exceeds the budget 3 ms" in health_gate(_result(), 3.0, "p90_ms")


def test_budget_option_beats_recipe_in_manifest(tmp_path):
    b = Bundle(tmp_path, {"recipe": {"budget": {"latency_ms": 7.5}}})
    assert latency_budget(b, RolloutOptions()) == 7.5
    assert latency_budget(b, RolloutOptions(latency_budget_ms=2)) == 2.0
    assert latency_budget(Bundle(tmp_path, {}), RolloutOptions()) is None


def test_bad_options_are_refused():
    with pytest.raises(EdgeKitError, match="batch_size=0"):
        RolloutOptions(batch_size=0)
    with pytest.raises(EdgeKitError, match="latency_stat"):
        RolloutOptions(latency_stat="p42")


def test_which_errors_are_retried():
    """Decided by type, never by message text: a lost link is retried; a device that answered,
    a rejected host key or key, a broken agent answer or a bug is not."""
    assert retryable(LinkLost("d", "the connection dropped while running 'python3'"))
    assert retryable(DeviceUnreachable("d", "cannot connect to u@h:22 (timeout)"))
    assert not retryable(HostKeyRejected("d", "host key of [h]:22 CHANGED"))
    assert not retryable(EdgeKitError("device d: u@h:22 refused our key"))  # credentials: retrying will not help
    assert not retryable(AgentRefused("d", "activate", "disk_full", "no space left"))
    assert not retryable(AgentProtocolError("d", "the agent's output is not JSON"))
    # Message text does not matter: a plain EdgeKitError that reads like a lost link is not retried.
    assert not retryable(EdgeKitError("device d: cannot connect to u@h:22 (timeout)"))
    assert not retryable(ConnectionRefusedError())  # raw OS errors are the transport's to type
    assert not retryable(ValueError("bug"))


def test_devices_behind_one_sshd_share_a_limit():
    class E:
        def __init__(self, host, port):
            self.host, self.port, self.name = host, port, f"{host}:{port}"

    assert sshd_key(E("10.0.0.1", 22)) == sshd_key(E("10.0.0.1", 22)) != sshd_key(E("10.0.0.1", 2222))
