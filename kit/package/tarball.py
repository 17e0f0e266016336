"""A bundle as one plain .tar: manifest.json and manifest.sig first, then the pinned files.

Deterministic (sorted names, mtime 0, root-owned, 0644) so the same bundle gives the same bytes,
and written atomically. Devices extract it with device_agents.bundle's hardened reader.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from device_agents.bundle import MANIFEST_FILE
from device_agents.signature import SIGNATURE_FILE


def write_tar(bundle_dir: str | Path, tar_path: str | Path) -> Path:
    bundle_dir, tar_path = Path(bundle_dir), Path(tar_path)
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_bytes())
    names = [MANIFEST_FILE, SIGNATURE_FILE] + sorted(manifest["files"])
    tmp = tar_path.with_name(tar_path.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = (bundle_dir / name).stat().st_size, 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(bundle_dir / name, "rb") as f:
                tf.addfile(info, f)
    tmp.replace(tar_path)
    return tar_path
