"""The built-in `local` device: the real device agent in a child process on this machine.

It runs exactly the code an SSH device runs (`python3 -m device_agents ...`), minus the SSH hop:
the agent folder is used in place and bundles are read where they lie.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import device_agents
from kit.errors import EdgeKitError


def agent_root() -> Path:
    """The folder that holds the device_agents package (what gets copied to a device)."""
    return Path(device_agents.__file__).resolve().parent.parent


class LocalDevice:
    name = "local"
    emulated = False

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def run_agent(self, args: list[str], timeout: float = 900) -> dict:
        env = dict(os.environ)
        # Only the agent package on the path: the agent must not depend on kit/.
        env["PYTHONPATH"] = str(agent_root())
        # The local device is this host: it trusts the kit's own signing key(s), no enrolment step.
        from kit.package.signing import public_key_paths

        trusted = [str(p) for p in public_key_paths()] + [v for v in [env.get("EDGEKIT_TRUSTED_KEYS")] if v]
        env["EDGEKIT_TRUSTED_KEYS"] = os.pathsep.join(trusted)
        try:
            proc = subprocess.run([self.python, "-m", "device_agents", *args], capture_output=True, text=True,
                                  timeout=timeout, env=env, cwd=str(agent_root()))
        except subprocess.TimeoutExpired as e:
            raise EdgeKitError(f"device local: the agent did not answer within {timeout:g} s") from e
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise EdgeKitError(f"device local: the agent printed nothing (exit {proc.returncode}): {proc.stderr.strip()[-200:]}")
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError as e:
            raise EdgeKitError(f"device local: the agent's output is not JSON: {lines[-1][:200]}") from e

    def stage_bundle(self, bundle_path: Path) -> str:
        """Where the agent finds the bundle: on the local device, where it already lies."""
        return str(Path(bundle_path).resolve())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
