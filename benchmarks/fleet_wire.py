"""Measuring helpers of benchmarks/fleet.py: bytes and new TCP connections on the wire (nftables
counters), the summed RSS of a process tree, the CPU of a live tree (for a run stopped at its time
cap) and of ssh ControlPersist masters (which outlive ansible-playbook)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 1e6


class WireCounter:
    """Bytes sent to a set of local TCP ports, and TCP connections opened to them (SYN without ACK:
    one per ssh handshake), from nftables counters (its own table, removed after)."""

    def __init__(self, ports: list[int]):
        self.table = f"ekbench{os.getpid()}"
        self.ok = shutil.which("nft") is not None
        if not self.ok:
            return
        ports_s = ", ".join(map(str, ports))
        rules = (f"add table inet {self.table}\n"
                 f"add chain inet {self.table} out {{ type filter hook output priority 0; policy accept; }}\n"
                 f"add rule inet {self.table} out ip daddr 127.0.0.1 tcp dport {{ {ports_s} }} counter\n"
                 f"add rule inet {self.table} out ip daddr 127.0.0.1 tcp dport {{ {ports_s} }} "
                 f"tcp flags & (syn | ack) == syn counter\n")
        r = subprocess.run(["nft", "-f", "-"], input=rules, text=True, capture_output=True)
        self.ok = r.returncode == 0

    def _counters(self) -> list[dict]:
        out = subprocess.run(["nft", "-j", "list", "table", "inet", self.table], capture_output=True, text=True).stdout
        return [expr["counter"] for item in json.loads(out)["nftables"] if item.get("rule")
                for expr in item["rule"]["expr"] if "counter" in expr]

    def read(self) -> int | None:
        """Bytes sent so far (IP packets to the devices' ports)."""
        c = self._counters() if self.ok else []
        return int(c[0]["bytes"]) if c else None

    def connections(self) -> int | None:
        """TCP connections opened so far to the devices' ports."""
        c = self._counters() if self.ok else []
        return int(c[1]["packets"]) if len(c) > 1 else None

    def close(self):
        if self.ok:
            subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _mux_pids(mux_dir) -> list[int]:
    """ssh ControlPersist masters whose control socket lives in `mux_dir` (ours only)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and str(mux_dir) in _cmdline(int(d))
            and _cmdline(int(d)).startswith("ssh")]


def tree_rss_mb(root: int, mux_dir=None) -> float:
    """Summed RSS (MB) of `root` and its descendants (and, with mux_dir, the ssh masters there)."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                kids.setdefault(int(st[1]), []).append(int(d))
                rss[int(d)] = int(st[21])
    seen, todo = set(), [root] + (_mux_pids(mux_dir) if mux_dir else [])
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, []))
    return sum(rss.get(p, 0) for p in seen) * _PAGE_MB


def _tree(root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                kids.setdefault(int(st[1]), []).append(int(d))
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, []))
    return seen


def tree_cpu_s(root: int) -> float:
    """User+sys seconds of a live tree: each process's own plus its reaped children's (cutime, cstime).
    Used for a run stopped at its time cap, whose killed children RUSAGE_CHILDREN would not see."""
    total = 0
    for pid in _tree(root):
        st = _stat(pid)
        if st:
            total += sum(int(x) for x in st[11:15])
    return total / _TICK


def proc_cpu_s(mux_dir) -> dict[int, float]:
    """{pid: user+sys seconds} of the ssh masters in mux_dir (still running, so not in RUSAGE_CHILDREN)."""
    out = {}
    for pid in _mux_pids(mux_dir):
        st = _stat(pid)
        if st:
            out[pid] = (int(st[11]) + int(st[12])) / _TICK
    return out
