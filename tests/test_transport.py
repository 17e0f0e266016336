"""SSH transport against a real OpenSSH sshd on 127.0.0.1 (one server shared by this module)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from kit.errors import EdgeKitError
from kit.devices.bench import BenchOptions, bench
from kit.devices.inventory import DeviceEntry, Inventory, connect
from device_agents.protocol import DIGEST_FILE
from kit.devices.ssh import Deadlines, SshDevice

FAST = Deadlines(connect_s=10, command_s=30, io_idle_s=10, transfer_s=30)


@pytest.fixture(scope="module")
def device(sshd_device):
    with SshDevice(sshd_device, deadlines=FAST) as dev:
        yield dev


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _incoming(entry: DeviceEntry) -> list[str]:
    d = Path(entry.home) / "bundles" / ".incoming"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.mark.parametrize("which", ["pte_bundle", "onnx_bundle"])
def test_bench_through_sshd_end_to_end(which, request, device, sshd_device):
    bundle = request.getfixturevalue(which)
    events = []
    remote = device.stage_bundle(bundle.path, progress=lambda label, done, total: events.append((done, total)))
    assert remote == f"{sshd_device.home}/bundles/{bundle.bundle_id}"
    assert events and events[-1][0] == events[-1][1] > 0  # bytes really went over SFTP
    on_disk = Path(remote)
    for name, meta in bundle.manifest["files"].items():
        assert (on_disk / name).read_bytes() == (bundle.path / name).read_bytes()
    assert (on_disk / DIGEST_FILE).is_file() and _incoming(sshd_device) == []

    m = bench(device, bundle, BenchOptions(runs=10, warmup=2))
    assert m.device == sshd_device.name and m.runtime == bundle.runtime
    assert m.reference_passed and m.runs == 10 and 0 < m.p50_ms <= m.p99_ms
    assert m.raw["device"]["hostname"]

    again = []  # content-addressed: the same bundle is not sent twice
    assert device.stage_bundle(bundle.path, progress=lambda *a: again.append(a)) == remote
    assert again == []


def test_agent_pushed_once_and_trusted_keys_installed(sshd_device, ssh_keygen):
    pub = ssh_keygen("signing.ed25519").with_suffix(".ed25519.pub")
    with SshDevice(sshd_device, deadlines=FAST, trusted_keys=[pub]) as dev:
        agent_dir = dev.ensure_agent()
        assert Path(agent_dir, "device_agents", "agent.py").is_file()
        installed = list(Path(sshd_device.home, "trusted_keys").glob("*.pub"))
        assert pub.read_text().strip() in [p.read_text().strip() for p in installed]
        stamp = Path(agent_dir, DIGEST_FILE).stat().st_mtime_ns
        doc = dev.run_agent(["info"], timeout=60)
        assert doc["ok"] and doc["result"]["runtimes"]
    with SshDevice(sshd_device, deadlines=FAST, trusted_keys=[pub]) as dev:  # a new connection reuses it
        dev.ensure_agent()
        assert Path(agent_dir, DIGEST_FILE).stat().st_mtime_ns == stamp


def test_unknown_host_key_refused(sshd_device, sshd_factory_module, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    server = sshd_factory_module.server(sshd_device)
    with pytest.raises(EdgeKitError) as e:
        SshDevice(DeviceEntry(**{**sshd_device.__dict__, "known_hosts": str(empty)}), deadlines=FAST)
    msg = str(e.value)
    assert "not known" in msg and _fingerprint(Path(str(server.host_key) + ".pub")) in msg
    assert f"edgekit devices trust {sshd_device.name}" in msg


def test_changed_host_key_refused(sshd_device, tmp_path, ssh_keygen):
    other = ssh_keygen("other_host")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd_device.port} {' '.join(Path(str(other) + '.pub').read_text().split()[:2])}\n")
    with pytest.raises(EdgeKitError, match="CHANGED") as e:
        SshDevice(DeviceEntry(**{**sshd_device.__dict__, "known_hosts": str(kh)}), deadlines=FAST)
    assert _fingerprint(Path(str(other) + ".pub")) in str(e.value)


def test_wrong_user_key_refused(sshd_device, ssh_keygen):
    wrong = ssh_keygen("wrong_user")
    with pytest.raises(EdgeKitError, match="refused our key"):
        SshDevice(DeviceEntry(**{**sshd_device.__dict__, "key": str(wrong)}), deadlines=FAST, allow_agent=False)


def test_corrupt_bundle_refused_by_agent(device, pte_bundle, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(pte_bundle.path, bad)
    model = bad / pte_bundle.manifest["model"]["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the hash can tell
    model.write_bytes(bytes(data))  # manifest and signature untouched: they still vouch for the original
    remote = device.stage_bundle(bad)  # the transport moves bytes faithfully; judging them is the agent's job
    assert Path(remote, model.name).read_bytes() == bytes(data)
    doc = device.run_agent(["bench", "--bundle", remote, "--opts", json.dumps({"runs": 2})], timeout=120)
    assert not doc["ok"] and doc["error"]["code"] == "hash_mismatch", doc
    device.stage_bundle(pte_bundle.path)  # the good copy replaces it (same id, other content digest)
    assert device.run_agent(["verify", "--bundle", remote], timeout=120)["ok"]


def test_wrong_input_shape_reported(device, onnx_bundle):
    remote = device.stage_bundle(onnx_bundle.path)
    doc = device.run_agent(["bench", "--bundle", remote, "--opts", json.dumps({"runs": 2, "input_shape": [1, 3, 7, 7]})],
                           timeout=120)
    assert not doc["ok"] and doc["error"]["code"] == "bad_input_shape", doc


def test_deadline_on_a_command_that_never_answers(sshd_device):
    with SshDevice(sshd_device, deadlines=FAST) as dev:
        with pytest.raises(EdgeKitError, match="did not finish|stalled"):
            dev.exec("sleep 5", timeout=1.0)
        assert dev.exec("echo back", timeout=10)[1] == b"back\n"  # reconnects after the hard close


def test_inventory_roundtrip_groups_and_ansible(tmp_path, sshd_device):
    inv = Inventory({}, tmp_path / "devices.yaml")
    inv.add(DeviceEntry(name="pi1", host="10.0.0.5", user="pi", groups=["canary", "pis"]))
    inv.add(DeviceEntry(name="pi2", host="10.0.0.6", groups=["pis"]))
    inv.add(sshd_device)
    inv.save()
    back = Inventory.load(tmp_path / "devices.yaml")
    assert back.devices["pi1"] == inv.devices["pi1"] and back.devices[sshd_device.name] == sshd_device
    assert [e.name for e in back.select("pis")] == ["pi1", "pi2"]
    assert [e.name for e in back.select("canary,pi2")] == ["pi1", "pi2"]
    with pytest.raises(EdgeKitError, match="neither a device nor a group"):
        back.select("nope")
    with connect(sshd_device.name, back, deadlines=FAST) as dev:
        assert dev.exec("echo ok", 10)[1] == b"ok\n"

    ansible = tmp_path / "hosts.yaml"
    ansible.write_text(yaml.safe_dump({"all": {"hosts": {"jet": {"ansible_host": "10.1.1.1", "ansible_user": "nv"}},
                                               "children": {"lab": {"hosts": {"jet": None},
                                                                    "vars": {"ansible_python_interpreter": "/usr/bin/python3"}}}}}))
    jet = Inventory.load(ansible).get("jet")
    assert (jet.host, jet.user, jet.groups, jet.python) == ("10.1.1.1", "nv", ["lab"], "/usr/bin/python3")
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  x: {host: h, prot: 22}\n")
    with pytest.raises(EdgeKitError, match="unknown field.*prot"):
        Inventory.load(bad)


def test_ssh_config_names_the_device(sshd_device, tmp_path):
    """Host alias, HostName, Port, User and IdentityFile come from an OpenSSH config file."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host lab-pi\n  HostName 127.0.0.1\n  Port {sshd_device.port}\n  User {sshd_device.user}\n"
                   f"  IdentityFile {sshd_device.key}\n")
    entry = DeviceEntry(name="aliased", host="lab-pi", known_hosts=sshd_device.known_hosts, home=sshd_device.home,
                        python=sshd_device.python)
    with SshDevice(entry, deadlines=FAST, ssh_config=cfg, allow_agent=False) as dev:
        assert dev.target()[:3] == ("127.0.0.1", sshd_device.port, sshd_device.user)
        assert dev.exec("echo via-config", 10)[1] == b"via-config\n"


def test_ssh_agent_key_is_used(sshd_device, tmp_path, monkeypatch):
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", sshd_device.key], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on: only the agent has the key
        entry = DeviceEntry(**{**sshd_device.__dict__, "key": None})
        with SshDevice(entry, deadlines=FAST, ssh_config=tmp_path / "none") as dev:
            assert dev.exec("echo via-agent", 10)[1] == b"via-agent\n"
    finally:
        proc.kill()
        proc.wait(timeout=10)
