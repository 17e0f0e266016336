"""An emulated Raspberry Pi: an aarch64 Debian root file system run under qemu user-mode emulation.

The device is real ARM code end to end: its own aarch64 OpenSSH sshd (and sftp-server), aarch64
python3, and the aarch64 ONNX Runtime wheel, all run by qemu-aarch64-static through binfmt_misc.
The kit reaches it like any Pi, over SSH on a free 127.0.0.1 port.

  build_rootfs()  (rootfs.py) debootstrap (foreign + second stage under qemu) + device wheels from
                  the host's pip, cached in <cache>/pi-rootfs/<recipe hash>/ and rebuilt only when
                  the recipe changes.
  start_pi()      (run.py) overlay a fresh writable layer on the cached root file system, generate
                  keys, start sshd in a private mount + PID namespace, register the device in an
                  inventory.
  stop_pi()       (run.py) kill that namespace by PID (its mounts vanish with it), remove the cgroup
                  (cgroup.py), the inventory entry and the run folder (state.py); the last user out
                  also undoes the binfmt registration and the binfmt_misc mount, if the kit made them
                  (binfmt.py).

Why the rootfs's own sshd rather than the host's sshd running the rootfs's aarch64 python: the whole
SSH path (key exchange, sftp-server, the session shell) is then aarch64 code too, as on a real Pi,
with no host paths to translate. Its cost, measured by benchmarks/emulated_pi.py: connect + auth
0.84 s against 0.13 s for a native sshd, paid once per connection (a bench keeps one open).

Why a private mount + PID namespace: every mount (overlay, /proc) lives only in that namespace and
the kernel removes them when its first process (sshd) dies, so a crashed test cannot leak mounts.
Only /proc is mounted inside, not /sys: with both, `import onnxruntime` segfaults under qemu;
without /sys, ORT's cpuinfo prints a warning and falls back to baseline NEON kernels.
"""

from kit.testbed.pi.binfmt import BINFMT_DIR, BINFMT_NAME, binfmt_release, binfmt_setup, read_marker
from kit.testbed.pi.host import cache_dir, runs_dir
from kit.testbed.pi.rootfs import PiRecipe, RootfsInfo, build_rootfs
from kit.testbed.pi.run import emulated_pi, start_pi, status, stop_pi
from kit.testbed.pi.state import DEFAULT_NAME, EmulatedPi, load_pi, running

__all__ = ["BINFMT_DIR", "BINFMT_NAME", "binfmt_setup", "binfmt_release", "read_marker", "cache_dir", "runs_dir",
           "PiRecipe", "RootfsInfo", "build_rootfs", "EmulatedPi", "DEFAULT_NAME", "load_pi", "running",
           "start_pi", "stop_pi", "status", "emulated_pi"]
