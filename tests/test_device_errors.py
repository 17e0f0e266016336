"""Typed device errors: callers (a fleet rollout) retry by type, never by message text.
(A frozen device, a killed sshd mid-push and a full disk: tests/test_transport_faults.py.)

LinkLost (retryable; DeviceUnreachable when no connection could be made), HostKeyRejected,
AgentRefused(code), AgentProtocolError, and a plain DeviceError for what retrying cannot fix.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kit.devices import DeviceEntry, LocalDevice
from kit.devices.base import parse_envelope, result_of
from kit.devices.bench import BenchOptions, bench
from kit.devices.ssh import Deadlines, SshDevice
from kit.errors import AgentProtocolError, AgentRefused, DeviceError, DeviceUnreachable, HostKeyRejected, LinkLost

TIGHT = Deadlines(connect_s=5, command_s=15, io_idle_s=3, transfer_s=8, min_rate_bps=50e6)


def test_stopped_sshd_is_unreachable(sshd_factory):
    entry, = sshd_factory(1)
    sshd_factory.server(entry).stop()
    with pytest.raises(DeviceUnreachable, match="cannot connect") as e:
        SshDevice(entry, deadlines=TIGHT)
    assert e.value.retryable and e.value.device == entry.name


def test_sshd_killed_under_an_open_device_is_link_lost_on_the_next_call(sshd_factory):
    entry, = sshd_factory(1)
    server = sshd_factory.server(entry)
    with SshDevice(entry, deadlines=TIGHT) as dev:
        assert dev.exec("echo up", 10)[1] == b"up\n"
        server.kill()
        with pytest.raises(LinkLost) as e:
            dev.run_agent(["info"], timeout=10)
        assert e.value.retryable


def test_unknown_and_changed_host_keys_are_rejected(sshd_device, tmp_path, ssh_keygen):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRejected, match="not known") as e:
        SshDevice(DeviceEntry(**{**sshd_device.__dict__, "known_hosts": str(empty)}), deadlines=TIGHT)
    assert not e.value.retryable and f"edgekit devices trust {sshd_device.name}" in str(e.value)
    other = ssh_keygen("other_host")
    changed = tmp_path / "changed"
    changed.write_text(f"[127.0.0.1]:{sshd_device.port} {' '.join(Path(str(other) + '.pub').read_text().split()[:2])}\n")
    with pytest.raises(HostKeyRejected, match="CHANGED"):
        SshDevice(DeviceEntry(**{**sshd_device.__dict__, "known_hosts": str(changed)}), deadlines=TIGHT)


def test_wrong_user_key_is_not_retryable(sshd_device, ssh_keygen):
    with pytest.raises(DeviceError, match="refused our key") as e:
        SshDevice(DeviceEntry(**{**sshd_device.__dict__, "key": str(ssh_keygen("wrong"))}), deadlines=TIGHT,
                  allow_agent=False)
    assert not e.value.retryable and not isinstance(e.value, LinkLost)


def test_refused_bench_is_agent_refused_with_its_code(sshd_device, onnx_bundle):
    with SshDevice(sshd_device, deadlines=TIGHT) as dev:
        with pytest.raises(AgentRefused, match=f"bench of {onnx_bundle.path.name} failed") as e:
            bench(dev, onnx_bundle, BenchOptions(runs=2, warmup=0, input_shape=[1, 3, 7, 7]))
    assert e.value.code == "bad_input_shape" and not e.value.retryable and e.value.device == sshd_device.name


def test_python_missing_on_the_device_is_not_retryable(sshd_device):
    entry = DeviceEntry(**{**sshd_device.__dict__, "python": "/nonexistent/python3"})
    with SshDevice(entry, deadlines=TIGHT) as dev:
        with pytest.raises(DeviceError, match="was not found on the device") as e:
            dev.run_agent(["info"], timeout=30)
    assert not e.value.retryable


def test_forced_agent_refusal_is_agent_refused(sshd_factory):
    entry, = sshd_factory(1, forced_command=True)
    with SshDevice(sshd_factory.server(entry).entry(forced=False), deadlines=TIGHT) as admin:
        admin.ensure_agent()
    with SshDevice(entry, deadlines=TIGHT) as dev:
        with pytest.raises(DeviceError, match="allows no SFTP"):
            dev.sftp()
        doc = dev.run_agent(["bench", "--bundle", "/etc"], timeout=30)
        with pytest.raises(AgentRefused) as e:
            result_of(dev.name, "bench", doc)
    assert e.value.code == "bad_path"


# --- no sshd needed ---------------------------------------------------------------------------

def test_envelope_problems_are_agent_protocol_errors():
    with pytest.raises(AgentProtocolError, match=r"device d1: the agent printed nothing \(exit 3\): Traceback\.\.\. boom$"):
        parse_envelope("d1", b"", exit_code=3, stderr=b"Traceback...\nboom\n")
    with pytest.raises(AgentProtocolError, match="not JSON"):
        parse_envelope("d1", "hello\n")
    with pytest.raises(AgentProtocolError, match="schema_version"):
        parse_envelope("d1", json.dumps({"schema_version": 99, "ok": True}))
    doc = parse_envelope("d1", json.dumps({"schema_version": 1, "ok": False, "error": {"code": "replayed", "message": "m"}}))
    with pytest.raises(AgentRefused) as e:
        result_of("d1", "install", doc)
    assert (e.value.code, e.value.verb, str(e.value)) == ("replayed", "install", "device d1: install failed [replayed]: m")


def test_local_and_ssh_devices_have_the_same_methods():
    for method in ("run_agent", "stage_bundle", "close", "__enter__", "__exit__"):
        assert inspect.signature(getattr(LocalDevice, method)) == inspect.signature(getattr(SshDevice, method)), method


def test_local_agent_refusal_is_agent_refused(tmp_path):
    lines = []
    with LocalDevice() as dev:
        doc = dev.run_agent(["verify", "--bundle", str(tmp_path / "missing")], timeout=60, on_stderr=lines.append)
    with pytest.raises(AgentRefused) as e:
        result_of(dev.name, "verify", doc)
    assert e.value.code and e.value.device == "local"


def test_devices_package_loads_no_paramiko():
    code = ("import sys, kit.devices, kit.devices.inventory, kit.devices.enrol, kit.cli.devices\n"
            "heavy = [m for m in ('paramiko', 'torch', 'onnxruntime', 'executorch') if m in sys.modules]\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
