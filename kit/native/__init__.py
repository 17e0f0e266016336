"""The native .pte runner: built on the host per device architecture (kit.native.build), pushed
to devices next to the agent. Heavy work happens in functions; importing this package is cheap."""

from kit.native.build import build_runner, install_size, normalize_arch, runner_files

__all__ = ["build_runner", "install_size", "normalize_arch", "runner_files"]
