"""`edgekit verify BUNDLE`: the device agent's own checks, run on the host.

The same code (device_agents.bundle.verify_bundle) decides on the host and on the device, so a
bundle this accepts is one the agent accepts, given the device trusts the same key.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from device_agents.bundle import verify_bundle
from device_agents.errors import AgentError
from kit.errors import EdgeKitError


@dataclass
class Verified:
    path: str
    bundle_id: str
    name: str
    sequence: int
    key_id: str
    runtime: str
    format: str
    model_sha256: str
    files: int
    expires: str | None = None
    delegation: dict | None = None
    preprocessing: dict | None = None  # the manifest's: layout, dtype, mean/std, resize, channel order, range
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class BundleRefused(EdgeKitError):
    """A bundle failed verification; `code` is the agent's stable error code."""

    def __init__(self, path, code: str, message: str):
        super().__init__(f"{path}: refused [{code}]: {message}")
        self.code = code


def verify(path: str | Path, trust: list[str | Path] | None = None) -> Verified:
    """Verify signature, schema, expiry and every file of a bundle folder or .tar.

    `trust`: folders or .pub files of trusted keys; default: this host's own public keys
    (kit.package.signing.public_key_paths). Replay state is a device matter: not checked here.
    """
    from kit.package.signing import public_key_paths

    path = Path(path)
    sources = [str(p) for p in (trust if trust is not None else public_key_paths())]
    if not sources:
        raise EdgeKitError("no public key to verify with: run 'edgekit keys init' or pass --trust-dir")
    with tempfile.TemporaryDirectory() as home:
        try:
            bundle_dir, manifest = verify_bundle(str(path), home=home, trust_dirs=sources, check_replay=False,
                                                 extract_to=str(Path(home) / "extracted"))
        except AgentError as e:
            raise BundleRefused(path, e.code, e.message) from None
    key_id = manifest.pop("_signature_checked", "")
    deleg = manifest.get("delegation")
    return Verified(path=str(path), bundle_id=manifest["bundle_id"], name=manifest.get("name", ""),
                    sequence=manifest["sequence"], key_id=key_id, runtime=manifest["runtime"]["name"],
                    format=manifest["runtime"].get("format", ""), model_sha256=manifest["model"]["sha256"],
                    files=len(manifest["files"]), expires=manifest.get("expires"), delegation=deleg,
                    preprocessing=manifest.get("preprocessing"),
                    warnings=list(manifest.get("warnings", [])))
