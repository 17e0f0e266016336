"""Bundles the device must refuse: each with its own error code, nothing written outside the target.

The checks run through device_agents.bundle.verify_bundle (the agent's own code) in-process for
speed; a few go through the real agent process (LocalDevice) and `edgekit verify` too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from device_agents.bundle import verify_bundle
from device_agents.errors import AgentError
from device_agents.replay import record_activation
from device_agents.signature import verify_pure
from kit.package.signing import canonical_json, sign_bytes


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "agent-home"


@pytest.fixture
def trust(edgekit_signing_key) -> list[str]:
    return [str(edgekit_signing_key.public)]


def _refused(bundle, code: str, home: Path, trust, **kw) -> str:
    """Assert verify_bundle refuses with `code`; return the message (one clear line)."""
    with pytest.raises(AgentError) as e:
        verify_bundle(str(bundle), home=str(home), trust_dirs=trust, **kw)
    assert e.value.code == code, (e.value.code, e.value.message)
    assert e.value.message and "\n" not in e.value.message
    return e.value.message


def resign(src: Path, dst: Path, key=None, **changes) -> Path:
    """Copy a bundle, change manifest fields and sign it again (with the session key by default)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_bytes())
    manifest.update(changes)
    manifest.pop("bundle_id")  # content addressed, as write_bundle does
    manifest["bundle_id"] = hashlib.sha256(canonical_json(manifest)).hexdigest()[:16]
    data = canonical_json(manifest)
    (dst / "manifest.json").write_bytes(data)
    (dst / "manifest.sig").write_bytes(sign_bytes(data, key))
    return dst


def test_the_good_bundle_passes(onnx_bundle, home, trust):
    path, manifest = verify_bundle(str(onnx_bundle.path), home=str(home), trust_dirs=trust)
    assert path == str(onnx_bundle.path) and manifest["bundle_id"] == onnx_bundle.bundle_id
    assert manifest["_signature_checked"].startswith("SHA256:")


def test_flipped_byte_in_model(onnx_bundle, tmp_path, home, trust):
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "model.onnx").write_bytes(bytes(data))
    assert "model.onnx" in _refused(bad, "hash_mismatch", home, trust)


def test_changed_manifest(onnx_bundle, tmp_path, home, trust):
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    m = json.loads((bad / "manifest.json").read_bytes())
    m["reference"]["atol"] = 1e9  # a tampered tolerance would let any output "pass"
    (bad / "manifest.json").write_bytes(canonical_json(m))
    assert "changed after signing" in _refused(bad, "bad_signature", home, trust)


def test_missing_file(onnx_bundle, tmp_path, home, trust):
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    (bad / "reference_output.npy").unlink()
    assert "reference_output.npy" in _refused(bad, "missing_file", home, trust)


def test_unsigned_bundle(onnx_bundle, tmp_path, home, trust):
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    (bad / "manifest.sig").unlink()
    _refused(bad, "unsigned", home, trust)


def test_wrong_signature_key(onnx_bundle, other_signing_key, tmp_path, home, trust):
    bad = resign(onnx_bundle.path, tmp_path / "b", key=other_signing_key.private)
    msg = _refused(bad, "untrusted_key", home, trust)
    assert other_signing_key.key_id in msg


def test_unsupported_schema_version(onnx_bundle, tmp_path, home, trust):
    bad = resign(onnx_bundle.path, tmp_path / "b", schema_version=99)
    msg = _refused(bad, "unsupported_schema", home, trust)
    assert "99" in msg and "update the agent" in msg


def test_runtime_too_old(onnx_bundle, tmp_path, home, trust):
    runtime = dict(onnx_bundle.manifest["runtime"], min_version="99.0")
    bad = resign(onnx_bundle.path, tmp_path / "b", runtime=runtime)
    assert "onnxruntime >= 99.0" in _refused(bad, "runtime_too_old", home, trust)


def test_valid_signature_over_a_different_manifest(onnx_bundle, tmp_path, home, trust):
    other = resign(onnx_bundle.path, tmp_path / "other", sequence=1)
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    shutil.copyfile(other / "manifest.sig", bad / "manifest.sig")  # genuine signature, other manifest
    _refused(bad, "bad_signature", home, trust)


def test_mix_and_match_model_from_another_bundle(onnx_bundle, pte_bundle, tmp_path, home, trust):
    # A genuine signed manifest with another (also genuine) bundle's model renamed into place.
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    shutil.copyfile(pte_bundle.model_file, bad / "model.onnx")
    _refused(bad, "size_mismatch", home, trust)


def test_expired(onnx_bundle, tmp_path, home, trust):
    bad = resign(onnx_bundle.path, tmp_path / "b", expires="2020-01-01T00:00:00Z")
    assert "2020-01-01" in _refused(bad, "expired", home, trust)
    fresh = resign(onnx_bundle.path, tmp_path / "c", expires="2999-01-01T00:00:00Z")
    verify_bundle(str(fresh), home=str(home), trust_dirs=trust)


def test_replayed_older_bundle(onnx_bundle, tmp_path, home, trust):
    old = resign(onnx_bundle.path, tmp_path / "old", name="replay", sequence=100)
    new = resign(onnx_bundle.path, tmp_path / "new", name="replay", sequence=200)
    newer = resign(onnx_bundle.path, tmp_path / "newer", name="replay", sequence=300)
    _, m_old = verify_bundle(str(old), home=str(home), trust_dirs=trust)
    record_activation(m_old, str(home))
    _, m_new = verify_bundle(str(new), home=str(home), trust_dirs=trust)
    record_activation(m_new, str(home))
    assert "older than the activated 200" in _refused(old, "replayed", home, trust)
    with pytest.raises(AgentError, match="older"):
        record_activation(m_old, str(home))
    verify_bundle(str(new), home=str(home), trust_dirs=trust)  # the active one stays acceptable
    # A rollback to a version this device activated before is allowed only when asked for...
    verify_bundle(str(old), home=str(home), trust_dirs=trust, allow_rollback=True)
    # ...and the recorded sequence never goes down, so newer bundles still pass and older still fail.
    record_activation(m_old, str(home), rollback=True)
    state = json.loads((home / "state.json").read_text())["models"]["replay"]
    assert state["sequence"] == 200 and state["bundle_id"] == m_old["bundle_id"]
    verify_bundle(str(newer), home=str(home), trust_dirs=trust)
    record_activation(m_new, str(home))  # rolling forward again to the newest activated is no replay
    never = resign(onnx_bundle.path, tmp_path / "never", name="replay", sequence=150)
    _refused(never, "replayed", home, trust, allow_rollback=True)


def test_onnx_external_data_outside_the_bundle(tmp_path, home, trust):
    import onnx
    from onnx import TensorProto, helper

    from kit.errors import EdgeKitError
    from kit.package import package
    from kit.package.bundle import write_bundle

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[w])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src / "m.onnx"))
    x = np.zeros(4, np.float32)
    with pytest.raises(EdgeKitError, match="outside the model's folder"):  # the packager refuses it...
        package(src / "m.onnx", "onnx", tmp_path / "pkg", x, name="ext")
    assert not (tmp_path / "pkg").exists()
    # ...and so does the device, even for a bundle signed by a trusted key.
    bundle = write_bundle(tmp_path / "bundle", src / "m.onnx", "ext", x, x + 1)
    msg = _refused(bundle.path, "external_data_outside", home, trust)
    assert "../secret.bin" in msg


# --- tar bundles -------------------------------------------------------------------------------

def _tar_with(src: Path, tar_path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = (),
              replace: dict[str, tarfile.TarInfo] | None = None) -> Path:
    """A tar of bundle `src` (genuine, signed) plus hostile members."""
    with tarfile.open(tar_path, "w") as tf:
        for name in ["manifest.json", "manifest.sig", *sorted(json.loads((src / "manifest.json").read_bytes())["files"])]:
            if replace and name in replace:
                tf.addfile(replace[name], None)
                continue
            data = (src / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return tar_path


def _member(name: str, data: bytes = b"evil", kind=tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def test_good_tar_extracts_into_the_target(onnx_bundle, tmp_path, home, trust):
    from kit.package.tarball import write_tar

    tar = write_tar(onnx_bundle.path, tmp_path / "b.tar")
    path, m = verify_bundle(str(tar), home=str(home), trust_dirs=trust)
    assert Path(path) == home / "bundles" / onnx_bundle.bundle_id
    assert sorted(os.listdir(path)) == sorted([*m["files"], "manifest.json", "manifest.sig"])
    again, _ = verify_bundle(str(tar), home=str(home), trust_dirs=trust)  # already there: re-verified, reused
    assert again == path


@pytest.mark.parametrize("member, code", [
    (_member("../escaped.txt"), "tar_path_escape"),
    (_member("sub/../../escaped.txt"), "tar_path_escape"),
    (_member("ABSOLUTE"), "tar_absolute_path"),
    (_member("link.npy", kind=tarfile.SYMTYPE, link="/etc/passwd"), "tar_link"),
    (_member("hard.npy", kind=tarfile.LNKTYPE, link="model.onnx"), "tar_link"),
    (_member("dev", kind=tarfile.CHRTYPE), "tar_special_file"),
    (_member("fifo", kind=tarfile.FIFOTYPE), "tar_special_file"),
    (_member("unpinned.txt"), "tar_unexpected_member"),
    (_member("model.onnx"), "tar_duplicate_member"),
])
def test_hostile_tar_is_refused_and_writes_nothing(onnx_bundle, tmp_path, home, trust, member, code):
    work = tmp_path / "work"
    work.mkdir()
    info, data = member
    if info.name == "ABSOLUTE":
        info.name = str(tmp_path / "absolute-escape.txt")
    tar = _tar_with(onnx_bundle.path, tmp_path / "hostile.tar", [(info, data)])
    before = _tree(tmp_path)
    target = work / "target"
    _refused(tar, code, home, trust, extract_to=str(target))
    assert _tree(tmp_path) == before  # no target, no target.part, nothing escaped
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "absolute-escape.txt").exists()


def test_tar_sizes_are_checked_against_the_manifest(onnx_bundle, tmp_path, home, trust):
    # Header claims more bytes than the signed manifest pins: refused before any byte is read.
    src = tmp_path / "src"
    shutil.copytree(onnx_bundle.path, src)
    (src / "model.onnx").write_bytes((onnx_bundle.path / "model.onnx").read_bytes() + b"\0" * 4096)
    tar = _tar_with(src, tmp_path / "big.tar")
    before = _tree(tmp_path)
    msg = _refused(tar, "tar_size_mismatch", home, trust, extract_to=str(tmp_path / "target"))
    assert "model.onnx" in msg and _tree(tmp_path) == before


def test_tar_with_a_tampered_model_leaves_nothing(onnx_bundle, tmp_path, home, trust):
    src = shutil.copytree(onnx_bundle.path, tmp_path / "src")
    data = bytearray((src / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (src / "model.onnx").write_bytes(bytes(data))
    tar = _tar_with(src, tmp_path / "t.tar")
    before = _tree(tmp_path)
    _refused(tar, "hash_mismatch", home, trust, extract_to=str(tmp_path / "target"))
    assert _tree(tmp_path) == before


def test_symlink_inside_a_bundle_folder(onnx_bundle, tmp_path, home, trust):
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    outside = tmp_path / "ref.npy"
    shutil.move(bad / "reference_input.npy", outside)
    (bad / "reference_input.npy").symlink_to(outside)
    _refused(bad, "bad_path", home, trust)
    inside = bad / "copy.npy"
    shutil.copyfile(outside, inside)
    (bad / "reference_input.npy").unlink()
    (bad / "reference_input.npy").symlink_to("copy.npy")
    _refused(bad, "link_in_bundle", home, trust)


# --- the fallback verifier and the real agent process ---------------------------------------------

def test_pure_python_ed25519_matches_rfc8032_and_cryptography(monkeypatch, onnx_bundle, tmp_path, home, trust):
    # RFC 8032 section 7.1, test 2 (one-byte message 0x72).
    pub = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    sig = bytes.fromhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
    assert verify_pure(pub, b"\x72", sig) and not verify_pure(pub, b"\x73", sig)
    assert not verify_pure(pub, b"\x72", sig[:32] + (int.from_bytes(sig[32:], "little") + 2 ** 253).to_bytes(32, "little"))
    # The agent without `cryptography` (as on a bare device) accepts and refuses the same bundles.
    for mod in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")] + ["cryptography"]:
        monkeypatch.setitem(sys.modules, mod, None)
    import device_agents.signature as sig_mod

    calls = []
    monkeypatch.setattr(sig_mod, "verify_pure", lambda *a: calls.append(1) or verify_pure(*a))
    verify_bundle(str(onnx_bundle.path), home=str(home), trust_dirs=trust)
    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    m = json.loads((bad / "manifest.json").read_bytes())
    m["sequence"] += 1
    (bad / "manifest.json").write_bytes(canonical_json(m))
    _refused(bad, "bad_signature", home, trust)
    assert calls  # the fallback did the work


def test_real_agent_and_cli_refuse_with_the_code(onnx_bundle, other_signing_key, tmp_path, capsys):
    from kit.cli import main
    from kit.devices import LocalDevice

    bad = shutil.copytree(onnx_bundle.path, tmp_path / "b")
    (bad / "reference_input.npy").write_bytes(b"not the pinned file")
    doc = LocalDevice().run_agent(["verify", "--bundle", str(bad)])
    assert doc["ok"] is False and doc["error"]["code"] == "size_mismatch"
    doc = LocalDevice().run_agent(["bench", "--bundle", str(bad), "--runs", "3"])
    assert doc["ok"] is False and doc["error"]["code"] == "size_mismatch"
    assert main(["verify", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[size_mismatch]" in err[0] and str(bad) in err[0]
    # A key the device does not trust, until the operator names it with --trust-dir.
    foreign = resign(onnx_bundle.path, tmp_path / "foreign", key=other_signing_key.private)
    doc = LocalDevice().run_agent(["verify", "--bundle", str(foreign)])
    assert doc["ok"] is False and doc["error"]["code"] == "untrusted_key"
    doc = LocalDevice().run_agent(["verify", "--bundle", str(foreign), "--trust-dir", str(other_signing_key.public)])
    assert doc["ok"] is True and doc["result"]["key_id"] == other_signing_key.key_id
