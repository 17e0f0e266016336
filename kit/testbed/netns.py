"""Network namespaces joined to the host by a veth pair, and sshd devices listening inside them:
links that can be cut, slowed or made lossy (fleet fault tests). Needs root and iproute2
(nftables for loss).

Namespace names carry this process's pid (ekns<pid>x<n>) so parallel runs never collide and a
later run can sweep what a SIGKILLed one left behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from kit.testbed.sshd import SshdServer

_counter = itertools.count(1)  # unique link numbers within this process


def ip(*args, check=True, netns: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (ip, tc, ...), inside namespace `netns` if given."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def netns_refusal() -> str | None:
    """Why this machine refuses network namespaces (None if it allows them)."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install -y iproute2)"
    name = f"ekprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns add' refused: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def sweep_stale_namespaces() -> None:
    """Remove namespaces an earlier, SIGKILLed run of ours left behind (its pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        m = re.match(r"^(ekns(\d+)x\d+)\b", line.strip())
        if not m or Path(f"/proc/{m.group(2)}").exists():
            continue
        pids = subprocess.run(["ip", "netns", "pids", m.group(1)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)


class NetnsLink:
    """A namespace joined to the host by a veth pair: host 10.213.<n>.1/24, namespace 10.213.<n>.2/24."""

    def __init__(self):
        n = (os.getpid() % 200) + next(_counter) * 7 % 50
        self.n = n % 250 + 1
        tag = f"{os.getpid()}x{next(_counter)}"  # pid first: a stale namespace names its (dead) creator
        self.ns = f"ekns{tag}"
        self.host_if, self.ns_if = f"ekh{tag}"[:15], f"ekd{tag}"[:15]
        self.host_addr, self.ns_addr = f"10.213.{self.n}.1", f"10.213.{self.n}.2"

    def __enter__(self):
        try:
            ip("ip", "netns", "add", self.ns)
            ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            ip("ip", "link", "set", self.ns_if, "netns", self.ns)
            ip("ip", "addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
            ip("ip", "link", "set", self.host_if, "up")
            ip("ip", "addr", "add", f"{self.ns_addr}/24", "dev", self.ns_if, netns=self.ns)
            ip("ip", "link", "set", self.ns_if, "up", netns=self.ns)
            ip("ip", "link", "set", "lo", "up", netns=self.ns)
        except BaseException:
            self.close()
            raise
        return self

    def down(self):
        ip("ip", "link", "set", self.host_if, "down")

    def up(self):
        ip("ip", "link", "set", self.host_if, "up")

    def slow(self, rate: str = "8mbit"):
        ip("tc", "qdisc", "add", "dev", self.host_if, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
        # the device's answers too, so both directions are slow
        ip("tc", "qdisc", "add", "dev", self.ns_if, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
           netns=self.ns)

    def loss(self, percent: int):
        """Drop `percent`% of the namespace's outgoing packets (nftables inside the namespace only)."""
        rules = (f"add table inet ekloss\n"
                 f"add chain inet ekloss out {{ type filter hook output priority 0; policy accept; }}\n"
                 f"add rule inet ekloss out oifname \"{self.ns_if}\" numgen random mod 100 < {percent} drop\n")
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True)

    def lossless(self):
        """Undo loss(): drop the namespace's loss table."""
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet", "ekloss"], check=True,
                       capture_output=True)

    def close(self):
        # Deleting the namespace deletes its end of the veth (and so the pair), its nftables
        # tables and qdiscs; the host end is removed explicitly in case the move never happened.
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "flush", "ruleset"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def __exit__(self, *exc):
        self.close()


class NetnsSshd(SshdServer):
    """An sshd listening on the namespace's address, started with `ip netns exec`."""

    def __init__(self, root: Path, name: str, link: NetnsLink, **kw):
        self.link = link
        self.addr = link.ns_addr  # before SshdServer writes its config and known_hosts
        super().__init__(root, name, **kw)

    def _argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.link.ns, *super()._argv()]  # exec: this PID is sshd itself


def netns_sshd(root: Path, name: str, link: NetnsLink, **kw) -> NetnsSshd:
    return NetnsSshd(root, name, link, **kw)
