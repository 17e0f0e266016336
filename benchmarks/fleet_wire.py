"""Measuring helpers of benchmarks/fleet.py: bytes on the wire (nftables counter), the summed RSS
of a process tree, and the CPU of ssh ControlPersist masters (which outlive ansible-playbook)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 1e6


class WireCounter:
    """Bytes sent to a set of local TCP ports, from an nftables counter (its own table, removed after)."""

    def __init__(self, ports: list[int]):
        self.table = f"ekbench{os.getpid()}"
        self.ok = shutil.which("nft") is not None
        if not self.ok:
            return
        ports_s = ", ".join(map(str, ports))
        rules = (f"add table inet {self.table}\n"
                 f"add chain inet {self.table} out {{ type filter hook output priority 0; policy accept; }}\n"
                 f"add rule inet {self.table} out ip daddr 127.0.0.1 tcp dport {{ {ports_s} }} counter\n")
        r = subprocess.run(["nft", "-f", "-"], input=rules, text=True, capture_output=True)
        self.ok = r.returncode == 0

    def read(self) -> int | None:
        if not self.ok:
            return None
        out = subprocess.run(["nft", "-j", "list", "table", "inet", self.table], capture_output=True, text=True).stdout
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["bytes"])
        return None

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


def proc_cpu_s(mux_dir) -> dict[int, float]:
    """{pid: user+sys seconds} of the ssh masters in mux_dir (still running, so not in RUSAGE_CHILDREN)."""
    out = {}
    for pid in _mux_pids(mux_dir):
        st = _stat(pid)
        if st:
            out[pid] = (int(st[11]) + int(st[12])) / _TICK
    return out
