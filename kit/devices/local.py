"""The built-in `local` device: the real device agent in a child process on this machine.

It runs exactly the code an SSH device runs (`python3 -m device_agents ...`), minus the SSH hop:
the agent folder is used in place and bundles are read where they lie.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import device_agents
from kit.devices.base import parse_envelope
from kit.devices.enrol import default_trusted_keys
from kit.errors import DeviceError
from kit.progress import ProgressFn


def agent_root() -> Path:
    """The folder that holds the device_agents package (what gets copied to a device)."""
    return Path(device_agents.__file__).resolve().parent.parent


class LocalDevice:
    name = "local"
    emulated = False

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def run_agent(self, args: list[str], timeout: float = 900, on_stderr=None) -> dict:
        """The agent's envelope (kit.devices.base.parse_envelope); on_stderr gets its stderr lines
        once it has exited."""
        env = dict(os.environ)
        # Only the agent package on the path: the agent must not depend on kit/.
        env["PYTHONPATH"] = str(agent_root())
        # The local device is this host: it trusts the kit's own signing key(s), no enrolment step.
        trusted = [str(p) for p in default_trusted_keys()] + [v for v in [env.get("EDGEKIT_TRUSTED_KEYS")] if v]
        env["EDGEKIT_TRUSTED_KEYS"] = os.pathsep.join(trusted)
        try:
            proc = subprocess.run([self.python, "-m", "device_agents", *[str(a) for a in args]], capture_output=True,
                                  text=True, timeout=timeout, env=env, cwd=str(agent_root()))
        except subprocess.TimeoutExpired as e:
            raise DeviceError(self.name, f"the agent did not answer within {timeout:g} s") from e
        if on_stderr is not None:
            from device_agents.protocol import is_heartbeat

            for line in proc.stderr.splitlines():
                if not is_heartbeat(line):  # liveness is for links that can freeze, not for this host
                    on_stderr(line)
        return parse_envelope(self.name, proc.stdout, exit_code=proc.returncode, stderr=proc.stderr)

    def stage_bundle(self, bundle_path: Path, progress: ProgressFn = None, check_space: bool = True) -> str:
        """Where the agent finds the bundle: on the local device, where it already lies (nothing to
        send, so `progress` and `check_space` have nothing to do)."""
        return str(Path(bundle_path).resolve())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
