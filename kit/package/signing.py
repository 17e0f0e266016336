"""Signing bundles on the host: ed25519 over manifest.json's exact bytes, with `cryptography`.

For the transport / fleet engineers -- which public keys a device must trust:

    from kit.package.signing import public_key_paths
    for pub in public_key_paths():          # list[Path] of OpenSSH 'ssh-ed25519 ...' .pub files
        upload(pub, f"{home}/trusted_keys/{pub.name}")   # at enrolment, mode 0644

Key files (`edgekit keys init`):
  signing key  $EDGEKIT_SIGNING_KEY, else config_dir()/keys/signing.ed25519  (PKCS#8 PEM, mode 0600)
  public key   the same path + ".pub"                                           (OpenSSH line)
  extra trust  config_dir()/keys/trusted/*.pub (e.g. the previous key during a key rotation)

The device side (device_agents/signature.py) verifies with the same file formats; it runs on
devices without `cryptography`, so it carries its own verifier.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from device_agents.signature import SIGNATURE_FILE, fingerprint
from kit.config import config_dir
from kit.errors import EdgeKitError


@dataclass
class KeyPair:
    private: Path
    public: Path
    key_id: str


def signing_key_path() -> Path:
    env = os.environ.get("EDGEKIT_SIGNING_KEY")
    return Path(env) if env else config_dir() / "keys" / "signing.ed25519"


def public_key_paths() -> list[Path]:
    """Public keys (OpenSSH .pub files) that devices should trust: install them at enrolment."""
    pub = Path(str(signing_key_path()) + ".pub")
    extra = sorted((config_dir() / "keys" / "trusted").glob("*.pub"))
    return [p for p in [pub, *extra] if p.is_file()]


def init_keys(private: str | Path | None = None, force: bool = False) -> KeyPair:
    """Create an ed25519 key pair: the private key 0600 (folder 0700), the public key beside it."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Path(private) if private else signing_key_path()
    public = Path(str(private) + ".pub")
    if private.exists() and not force:
        raise EdgeKitError(f"signing key {private} already exists; pass --force to replace it "
                           f"(devices trusting the old key will refuse new bundles)")
    private.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(private.parent, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    line = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode() + " edgekit-signing\n"
    _write_atomic(private, pem, 0o600)
    _write_atomic(public, line.encode(), 0o644)
    return KeyPair(private, public, fingerprint(raw))


def ensure_keys() -> KeyPair:
    """The default key pair, created on first use (the demo: no setup needed)."""
    path = signing_key_path()
    if path.is_file():
        return KeyPair(path, Path(str(path) + ".pub"), key_id(path))
    return init_keys(path)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def load_private_key(path: str | Path | None = None):
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path) if path else signing_key_path()
    if not path.is_file():
        raise EdgeKitError(f"signing key {path}: no such file; create one with 'edgekit keys init' (or pass --key)")
    data = path.read_bytes()
    try:
        key = (ser.load_ssh_private_key(data, None) if b"OPENSSH PRIVATE KEY" in data
               else ser.load_pem_private_key(data, None))
    except (ValueError, TypeError) as e:
        raise EdgeKitError(f"signing key {path}: not an unencrypted ed25519 private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgeKitError(f"signing key {path}: a {type(key).__name__}, not ed25519; create one with 'edgekit keys init'")
    return key


def key_id(path: str | Path | None = None) -> str:
    from cryptography.hazmat.primitives import serialization as ser

    raw = load_private_key(path).public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return fingerprint(raw)


def canonical_json(data: dict) -> bytes:
    """The one byte form a manifest is written and signed in (sorted keys, no spaces, ASCII)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign_bytes(manifest_bytes: bytes, key_path: str | Path | None = None) -> bytes:
    """The manifest.sig document for `manifest_bytes`."""
    from cryptography.hazmat.primitives import serialization as ser

    key = load_private_key(key_path)
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    doc = {"algorithm": "ed25519", "key_id": fingerprint(raw), "signed_file": "manifest.json",
           "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    return canonical_json(doc) + b"\n"


__all__ = ["KeyPair", "SIGNATURE_FILE", "canonical_json", "ensure_keys", "init_keys", "key_id", "load_private_key",
           "public_key_paths", "sign_bytes", "signing_key_path"]
