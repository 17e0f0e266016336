"""The health gate's decision and where its latency budget comes from (pure functions)."""

from __future__ import annotations

import pytest

from kit.errors import EdgeKitError
from kit.fleet.rollout import RolloutOptions, health_gate, is_connection_error, latency_budget, sshd_key
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
    import paramiko

    assert is_connection_error(ConnectionRefusedError())
    assert is_connection_error(EdgeKitError("device d: cannot connect to u@h:22 (timeout)"))
    try:
        try:
            raise paramiko.AuthenticationException("key refused")  # an SSHException, yet permanent
        except Exception as inner:
            raise EdgeKitError("device d: u@h:22 refused our key") from inner
    except EdgeKitError as e:
        assert not is_connection_error(e)
    assert not is_connection_error(EdgeKitError("device d: the agent's output is not JSON"))
    assert not is_connection_error(ValueError("bug"))


def test_devices_behind_one_sshd_share_a_limit():
    class E:
        def __init__(self, host, port):
            self.host, self.port, self.name = host, port, f"{host}:{port}"

    assert sshd_key(E("10.0.0.1", 22)) == sshd_key(E("10.0.0.1", 22)) != sshd_key(E("10.0.0.1", 2222))
