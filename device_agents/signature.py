"""Bundle signatures on the device: ed25519 over the exact bytes of manifest.json.

The manifest pins every file's sha256, so one signature covers the whole bundle (the SWUpdate /
RAUC scheme). The signature lives beside it in ``manifest.sig``, a tiny JSON document::

    {"algorithm": "ed25519", "key_id": "SHA256:<base64>", "signature": "<base64 of 64 bytes>"}

Trusted public keys are OpenSSH one-liners (``ssh-ed25519 AAAA... comment``), one per ``*.pub``
file, in ``<agent home>/trusted_keys/`` plus any folder or file given with ``--trust-dir`` or
``$EDGEKIT_TRUSTED_KEYS`` (os.pathsep separated). ``key_id`` is OpenSSH's SHA256 fingerprint, so
``ssh-keygen -lf signing.ed25519.pub`` shows the same string.

Imports only the standard library: devices may not have the ``cryptography`` package (a minimal
Raspberry Pi OS or Yocto image has python3 and little else), so verification falls back to a small
pure-Python RFC 8032 verifier when ``cryptography`` cannot be imported. Verification only: no
secret ever lives on the device, so constant-time arithmetic is not needed here.
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import json
import os
import struct

from device_agents.errors import AgentError

SIGNATURE_FILE = "manifest.sig"
MAX_SIGNATURE_BYTES = 4096  # a signature document is ~150 bytes; anything big is not one


# --- public keys -----------------------------------------------------------------------------

def fingerprint(raw_public_key: bytes) -> str:
    """OpenSSH-style fingerprint of an ed25519 public key (what `ssh-keygen -lf` prints)."""
    blob = _ssh_blob(raw_public_key)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _ssh_blob(raw: bytes) -> bytes:
    kind = b"ssh-ed25519"
    return struct.pack(">I", len(kind)) + kind + struct.pack(">I", len(raw)) + raw


def parse_public_key(text: str, source: str = "key") -> bytes:
    """The 32 raw key bytes from an OpenSSH `ssh-ed25519 AAAA...` line."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise AgentError("bad_trusted_key", f"{source}: not an 'ssh-ed25519 ...' public key line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        n = struct.unpack(">I", blob[:4])[0]
        kind = blob[4:4 + n]
        m = struct.unpack(">I", blob[4 + n:8 + n])[0]
        raw = blob[8 + n:8 + n + m]
    except (binascii.Error, struct.error, ValueError):
        raise AgentError("bad_trusted_key", f"{source}: the base64 key blob is damaged")
    if kind != b"ssh-ed25519" or len(raw) != 32 or 8 + n + m != len(blob):
        raise AgentError("bad_trusted_key", f"{source}: not a 32-byte ed25519 key")
    return raw


def trust_sources(home: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Folders and files whose *.pub keys the agent trusts."""
    sources = [os.path.join(home, "trusted_keys")]
    sources += [s for s in os.environ.get("EDGEKIT_TRUSTED_KEYS", "").split(os.pathsep) if s]
    sources += list(extra or ())
    return sources


def load_trusted_keys(sources: list[str]) -> dict[str, bytes]:
    """key_id -> raw public key, from every *.pub file in the given folders (or named directly)."""
    keys: dict[str, bytes] = {}
    for src in sources:
        src = os.path.expanduser(src)
        files = sorted(glob.glob(os.path.join(src, "*.pub"))) if os.path.isdir(src) else ([src] if os.path.isfile(src) else [])
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                raw = parse_public_key(f.read(4096), path)
            keys[fingerprint(raw)] = raw
    if not keys:
        raise AgentError("no_trusted_keys",
                         f"no trusted signing keys in {', '.join(sources)}; install the kit's public key "
                         f"(edgekit keys init; it goes to <agent home>/trusted_keys/ at enrolment)")
    return keys


# --- signatures ------------------------------------------------------------------------------

def parse_signature(sig_bytes: bytes) -> dict:
    if len(sig_bytes) > MAX_SIGNATURE_BYTES:
        raise AgentError("bad_signature_file", f"{SIGNATURE_FILE} is {len(sig_bytes)} bytes; not a signature document")
    try:
        doc = json.loads(sig_bytes.decode("utf-8"))
        sig = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error):
        raise AgentError("bad_signature_file", f"{SIGNATURE_FILE} is not a signature document made by 'edgekit package'")
    if not isinstance(doc, dict) or doc.get("algorithm") != "ed25519" or len(sig) != 64:
        raise AgentError("bad_signature_file", f"{SIGNATURE_FILE}: algorithm {doc.get('algorithm')!r} is not ed25519 "
                                               f"or the signature is not 64 bytes")
    return {"key_id": str(doc.get("key_id", "")), "signature": sig}


def verify_manifest_signature(manifest_bytes: bytes, sig_bytes: bytes, trusted: dict[str, bytes]) -> str:
    """Check `sig_bytes` (manifest.sig) over `manifest_bytes`; return the key id that signed it.

    Called before the manifest is parsed: nothing in an unauthenticated manifest is looked at.
    """
    sig = parse_signature(sig_bytes)
    for key_id, raw in trusted.items():
        if verify(raw, manifest_bytes, sig["signature"]):
            return key_id
    if sig["key_id"] in trusted:
        raise AgentError("bad_signature",
                         "manifest.json does not match its signature (changed after signing, or the signature "
                         "belongs to another manifest); re-package and re-sign the bundle")
    raise AgentError("untrusted_key",
                     f"the bundle is signed by key {sig['key_id'] or '(unnamed)'}, which this device does not trust "
                     f"(trusted: {', '.join(sorted(trusted))}); sign with a trusted key or enrol the key")


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """ed25519 verification: `cryptography` when importable, else the pure-Python fallback."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return verify_pure(public_key, message, signature)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


# --- pure-Python RFC 8032 ed25519 verification (section 6's reference algorithm) -------------
# Written by hand only because a device may lack `cryptography`; tests check it against
# `cryptography` and the RFC's test vectors. Extended coordinates (X, Y, Z, T).

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(a, b):
    x = (a[1] - a[0]) * (b[1] - b[0]) % _P
    y = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c = 2 * a[3] * b[3] * _D % _P
    d = 2 * a[2] * b[2] % _P
    e, f, g, h = y - x, d - c, d + c, y + x
    return (e * f, g * h, f * g, e * h)


def _mul(s: int, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _equal(a, b) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _recover_x(y: int, sign: int):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(s: bytes):
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def verify_pure(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decompress(public_key)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % _L
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))
