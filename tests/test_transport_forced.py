"""The forced-command agent: a key pinned with `restrict,command="..."` runs agent verbs and nothing else."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
from pathlib import Path

import paramiko
import pytest

from device_agents import forced
from kit.errors import EdgeKitError
from kit.devices.bench import BenchOptions, bench
from kit.devices.enrol import authorized_keys_line
from kit.devices.ssh import Deadlines, SshDevice

FAST = Deadlines(connect_s=10, command_s=30, io_idle_s=10, transfer_s=30)


@pytest.fixture(scope="module")
def forced_device(sshd_factory_module, onnx_bundle):
    entry, = sshd_factory_module(1, forced_command=True)
    admin = sshd_factory_module.server(entry).entry(forced=False)
    with SshDevice(admin, deadlines=FAST) as dev:  # enrolment key: installs the agent (code) only
        dev.ensure_agent()
    with SshDevice(entry, deadlines=FAST) as dev:
        yield dev, f"{entry.home}/bundles/{onnx_bundle.bundle_id}"


def _raw(dev: SshDevice, command: str) -> dict:
    code, out, _ = dev.exec(command, timeout=60)
    doc = json.loads(out.decode().strip().splitlines()[-1])
    assert (code == 0) == doc["ok"]
    return doc


def test_forced_key_pushes_and_benches(forced_device, onnx_bundle):
    dev, remote = forced_device
    assert dev.entry.forced_command
    assert dev.run_agent(["info"], timeout=60)["ok"]
    sent = []
    assert dev.stage_bundle(onnx_bundle.path, progress=lambda *a: sent.append(a)) == remote  # tar over `receive`
    assert sent and sent[-1][1] == sent[-1][2] > 0
    for name in onnx_bundle.manifest["files"]:
        assert Path(remote, name).read_bytes() == (onnx_bundle.path / name).read_bytes()
    assert not list(Path(remote).parent.joinpath(".incoming").iterdir())
    again = []
    assert dev.stage_bundle(onnx_bundle.path, progress=lambda *a: again.append(a)) == remote
    assert again == []  # `have` found the same content digest: nothing sent
    m = bench(dev, onnx_bundle, BenchOptions(runs=5, warmup=1))
    assert m.reference_passed and m.runs == 5 and m.raw["bundle_id"] == onnx_bundle.bundle_id
    with pytest.raises(EdgeKitError, match="allows no SFTP"):
        dev.sftp()


def _tar(members: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["wrong_sha256", "wrong_digest", "symlink", "escape", "truncated"])
def test_forced_receive_refuses_bad_transfers(forced_device, case):
    dev, remote = forced_device
    home = Path(remote).parent.parent
    files = {"manifest.json": b"{}", "model.onnx": b"x" * 1000}
    data = _tar(files, link="evil" if case == "symlink" else None)
    if case == "escape":
        data = _tar({"../../outside.txt": b"pwned"})
    digest = "0" * 64
    if case != "wrong_digest":
        h = hashlib.sha256()
        for rel in sorted(files):
            h.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\0{len(files[rel])}\n".encode())
        digest = h.hexdigest()
    sha = "f" * 64 if case == "wrong_sha256" else hashlib.sha256(data).hexdigest()
    size = len(data) + (100 if case == "truncated" else 0)
    code, out, _ = dev.exec(f"receive --bundle-id evil-{case} --digest {digest} --size {size} --sha256 {sha}",
                            timeout=60, stdin=data)
    doc = json.loads(out.decode().strip().splitlines()[-1])
    expected = {"wrong_sha256": "hash_mismatch", "wrong_digest": "hash_mismatch", "symlink": "bad_bundle",
                "escape": "transfer_failed", "truncated": "truncated"}[case]
    assert code == 1 and doc["error"]["code"] == expected, doc
    assert not (home / "bundles" / f"evil-{case}").exists()
    assert not [p for p in (home / "bundles" / ".incoming").iterdir() if p.name.startswith(f"evil-{case}")]
    assert not (home.parent / "outside.txt").exists() and not (home / "outside.txt").exists()


@pytest.mark.parametrize("command, code", [
    ("info; touch {canary}", "forbidden"),
    ("info && touch {canary}", "forbidden"),
    ("info | tee {canary}", "forbidden"),
    ("bench --bundle $(touch {canary})", "forbidden"),
    ("bench --bundle `touch {canary}`", "forbidden"),
    ("info > {canary}", "forbidden"),
    ("touch {canary}", "unknown_verb"),
    ("sh -c 'touch {canary}'", "unknown_verb"),
    ("_worker --bundle x", "unknown_verb"),
    ("bench --bundle /etc", "bad_path"),
    ("bench --bundle bundles/../../../etc", "bad_path"),
    ("verify --bundle bundles/x --trust-dir {canary}", "unknown_option"),
    ("bench --bundle bundles/x --runs 5x", "bad_value"),
    ("bench --bundle bundles/x --opts '{{\"runs\": {{\"a\": 1}}}}'", "bad_value"),
    ("info 'unbalanced", "bad_command"),
])
def test_forced_agent_refuses_shell_and_unknown_verbs(forced_device, tmp_path, command, code):
    dev, _ = forced_device
    canary = tmp_path / f"pwned-{secrets.token_hex(3)}"
    doc = _raw(dev, command.format(canary=canary))
    assert not doc["ok"] and doc["error"]["code"] == code, doc
    assert doc["schema_version"] == 1 and doc["error"]["message"]
    assert not canary.exists()


def test_forced_key_gets_no_sftp(forced_device):
    dev, _ = forced_device
    chan = dev._transport().open_session(timeout=10)
    chan.settimeout(10)
    chan.invoke_subsystem("sftp")  # sshd hands the forced command SSH_ORIGINAL_COMMAND=internal-sftp
    out = b""
    while not chan.exit_status_ready() or chan.recv_ready():
        chunk = chan.recv(4096)
        if not chunk:
            break
        out += chunk
    doc = json.loads(out.decode().strip().splitlines()[-1])
    assert doc["error"]["code"] == "unknown_verb"
    with pytest.raises((paramiko.SSHException, paramiko.SFTPError, EOFError, OSError)):
        paramiko.SFTPClient.from_transport(dev._transport())


def test_parse_validates_without_a_shell(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "bundles" / "b1").mkdir(parents=True)
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    argv = forced.parse("bench --bundle bundles/b1 --opts '{\"runs\": 5, \"input_shape\": [1, 1, 16, 16]}' --power")
    assert argv == ["bench", "--bundle", str((home / "bundles" / "b1").resolve()), "--opts",
                    '{"runs": 5, "input_shape": [1, 1, 16, 16]}', "--power"]
    (home / "bundles" / "escape").symlink_to("/etc")
    for command, code in [("", "no_command"), ("bench --bundle bundles/escape", "bad_path"),
                          ("rollback --name ../x", "bad_value"), ("status --name a\nb", "forbidden")]:
        with pytest.raises(forced.Refused) as e:
            forced.parse(command)
        assert e.value.code == code


def test_authorized_keys_line_is_restricted():
    line = authorized_keys_line("ssh-ed25519 AAAAC3Nza kit@host", python="/usr/bin/python3", home="/home/pi/.edgekit")
    assert line.startswith('restrict,command="env EDGEKIT_HOME=/home/pi/.edgekit PYTHONPATH=/home/pi/.edgekit/agent/')
    assert line.endswith('-m device_agents.forced" ssh-ed25519 AAAAC3Nza')
