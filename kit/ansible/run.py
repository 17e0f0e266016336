"""`run_playbook(export_dir)`: ansible-playbook on an exported project, as a subprocess.

ansible-core is an optional extra (`pip install 'edgekit[ansible]'`); the kit never imports it
(GPL-3.0, and a plugin loader the kit does not need), it only runs its command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kit.ansible.export import EXPORT_FILE
from kit.errors import EdgeKitError


def ansible_playbook() -> str:
    """The ansible-playbook command: on PATH, else beside this Python (a venv not activated)."""
    found = shutil.which("ansible-playbook") or shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    if not found:
        raise EdgeKitError("ansible-playbook not found; install it with: pip install 'edgekit[ansible]' "
                           "(or your distribution's ansible-core)")
    return found


def run_playbook(export_dir: str | Path, extra_args: list[str] | None = None, *, capture: bool = False,
                 timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run <export>/rollout.yml with <export>/ansible.cfg; the completed process (its exit code is
    Ansible's: 0 all ok, 2 a host failed, 4 unreachable, ...)."""
    out = Path(export_dir)
    if not (out / EXPORT_FILE).is_file() or not (out / "rollout.yml").is_file():
        raise EdgeKitError(f"{out}: not an export folder (no {EXPORT_FILE} / rollout.yml); make one with "
                           f"'edgekit ansible export BUNDLE --group G --out {out}'")
    env = {**os.environ, "ANSIBLE_CONFIG": str((out / "ansible.cfg").resolve())}
    cmd = [ansible_playbook(), "rollout.yml", *(extra_args or [])]
    try:
        return subprocess.run(cmd, cwd=out, env=env, text=True, capture_output=capture, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeKitError(f"ansible-playbook in {out} did not finish within {timeout:g} s") from None
