"""Fleet rollout benchmark: a ~5 MB signed bundle to 1, 10 and 50 loopback sshd devices.

For each fleet size, in the same run and against the same devices:
  - `edgekit rollout` (library call): canary 1, batches of 10, 10 devices at once, health gate
    (the agent's reference check + a 5-run latency measurement) on every device;
  - a plain sequential `scp -r` loop of the same bundle folder to each device (the baseline).
Reported: total seconds, seconds per device, bytes sent host -> devices on the wire (TCP payload
+ headers, counted by an nftables counter on the devices' ports; null if nft is missing), and
the ratio rollout / scp. Prints one JSON document.

    python benchmarks/fleet.py [--sizes 1,10,50] [--mb 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class WireCounter:
    """Bytes sent to a set of local TCP ports, from an nftables counter (its own table, removed after)."""

    TABLE = f"ekbench{os.getpid()}"

    def __init__(self, ports: list[int]):
        self.ok = shutil.which("nft") is not None
        if not self.ok:
            return
        ports_s = ", ".join(map(str, ports))
        rules = (f"add table inet {self.TABLE}\n"
                 f"add chain inet {self.TABLE} out {{ type filter hook output priority 0; policy accept; }}\n"
                 f"add rule inet {self.TABLE} out ip daddr 127.0.0.1 tcp dport {{ {ports_s} }} counter\n")
        r = subprocess.run(["nft", "-f", "-"], input=rules, text=True, capture_output=True)
        self.ok = r.returncode == 0

    def read(self) -> int | None:
        if not self.ok:
            return None
        out = subprocess.run(["nft", "-j", "list", "table", "inet", self.TABLE], capture_output=True, text=True).stdout
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["bytes"])
        return None

    def close(self):
        if self.ok:
            subprocess.run(["nft", "delete", "table", "inet", self.TABLE], capture_output=True)


def scp_loop(bundle: Path, servers, entries) -> float:
    t0 = time.perf_counter()
    for server, e in zip(servers, entries):
        dest = f"{e.user}@127.0.0.1:{server.home}/scp-baseline/"
        subprocess.run(["ssh", "-q", "-i", str(server.client_key), "-p", str(server.port), "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                        f"{e.user}@127.0.0.1", "mkdir", "-p", f"{server.home}/scp-baseline"], check=True)
        subprocess.run(["scp", "-q", "-r", "-i", str(server.client_key), "-P", str(server.port), "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                        str(bundle), dest], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--mb", type=float, default=5.0, help="approximate bundle size")
    ap.add_argument("--health-runs", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="ekbench-fleet-"))
    os.environ.setdefault("EDGEKIT_CONFIG_DIR", str(work / "config"))
    from kit.fleet import RolloutOptions, rollout
    from kit.devices.ssh import SshDevice
    from kit.package.signing import ensure_keys
    from kit.testbed.bundles import make_bundle
    from kit.testbed.sshd import SshdFactory

    ensure_keys()
    bundle = make_bundle(work / "bundle", "bench5mb", hidden=max(1, int(args.mb * 1024 * 1024 / 1028)), seed=7)
    bundle_bytes = sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file())
    results = []
    try:
        for n in sizes:
            with SshdFactory(work / f"sshd{n}") as factory:
                entries = factory.start(n)
                servers = [factory.server(e) for e in entries]
                counter = WireCounter([s.port for s in servers])
                try:
                    # Warm-up outside the timing: host keys, the agent pushed once per device (as
                    # after `edgekit devices check`), so both sides time the bundle, not the agent.
                    for e in entries:
                        with SshDevice(e, allow_agent=False) as dev:
                            dev.run_agent(["info"], timeout=120)
                    b0 = counter.read()
                    stage_s: dict[str, float] = {}
                    last: dict[str, tuple[str, float]] = {}

                    def on_progress(d):  # seconds each device spent in each stage, summed
                        now = time.perf_counter()
                        stage, since = last.get(d.device, ("pending", t0))
                        if d.stage != stage:
                            stage_s[stage] = stage_s.get(stage, 0.0) + now - since
                            last[d.device] = (d.stage, now)

                    t0 = time.perf_counter()
                    r = rollout(bundle, entries, f"bench{n}", store_path=work / "results.db",
                                options=RolloutOptions(canary=1, batch_size=10, max_parallel=10,
                                                       health_runs=args.health_runs, health_warmup=1),
                                connect=lambda e: SshDevice(e, allow_agent=False), progress=on_progress)
                    rollout_s = time.perf_counter() - t0
                    b1 = counter.read()
                    scp_s = scp_loop(bundle.path, servers, entries)
                    b2 = counter.read()
                finally:
                    counter.close()
                ok = sum(d.status == "updated" for d in r.devices)
                results.append({
                    "devices": n, "rollout_status": r.status, "devices_updated": ok,
                    "rollout_total_s": round(rollout_s, 3), "rollout_s_per_device": round(rollout_s / n, 3),
                    "rollout_bytes_sent": None if b1 is None else b1 - b0,
                    "scp_total_s": round(scp_s, 3), "scp_s_per_device": round(scp_s / n, 3),
                    "scp_bytes_sent": None if b2 is None else b2 - b1,
                    "ratio_rollout_vs_scp": round(rollout_s / scp_s, 3),
                    # mean seconds per device in each stage ("push" is the bundle transfer itself)
                    "stage_s_per_device": {k: round(v / n, 3) for k, v in stage_s.items()},
                })
                print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "benchmark": "fleet_rollout_vs_sequential_scp",
        "bundle_bytes": bundle_bytes,
        "rollout": "canary 1, batches of 10, 10 at once, health gate (reference check + %d timed runs) per device" % args.health_runs,
        "baseline": "sequential scp -r of the bundle folder, one device after another",
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
