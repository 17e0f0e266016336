"""Fleet rollout benchmark: what one host pays per device, native `edgekit rollout` vs the exported
Ansible playbook (`edgekit ansible export` + ansible-playbook), side by side in one run.

For each fleet size (loopback sshd devices, a ~5 MB signed bundle), both engines roll the bundle
out from nothing (each engine gets its own agent home on every device, so neither finds the
other's work): canary 1, batches of 10, 10 hosts at once (forks 10), the same health gate.
Each engine runs as its own process tree (the CLI `python -m kit rollout`, or ansible-playbook with
its forks and ssh ControlPersist masters), and for it we report:
  wall_s, host_cpu_s_per_device (user+sys of that whole tree: getrusage(RUSAGE_CHILDREN) of the
  reaped processes, plus the ssh mux masters read from /proc before they are stopped),
  peak_host_rss_mb (the tree's summed RSS, sampled every 0.2 s), bytes_sent_per_device (an
  nftables counter on the devices' ports; null without nft), and the ratios ansible / native.
The devices (sshd + agents) run on this same host, so wall time mixes host and device work;
the host's own CPU per device is the figure that says how far one host goes.

From the measured figures, a paper estimate: devices per minute one host rolls out with a 10 MB
bundle on a 100 Mbit/s uplink (bytes and CPU scaled from the measured 5 MB figures), and which
limit binds next. Writes benchmarks/results/fleet.json and prints it.

    python benchmarks/fleet.py [--sizes 1,10,50,100] [--mb 5] [--engines native,ansible]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.fleet_wire import WireCounter, proc_cpu_s, tree_rss_mb  # noqa: E402


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _measure(cmd: list[str], env: dict, cwd: Path, counter: WireCounter, mux_dir: Path | None = None) -> dict:
    """Run one engine as a process tree; wall, CPU (tree + mux masters), peak summed RSS, bytes."""
    b0, c0 = counter.read(), _children_cpu()
    peak = [0.0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb(proc.pid, mux_dir))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    cpu = _children_cpu() - c0
    mux_cpu = 0.0
    if mux_dir is not None:  # ControlPersist masters outlive the play: count them, then stop them
        for pid, secs in proc_cpu_s(mux_dir).items():
            mux_cpu += secs
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    b1 = counter.read()
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": cpu + mux_cpu, "mux_cpu_s": mux_cpu, "peak_rss_mb": peak[0],
            "bytes": None if b0 is None or b1 is None else b1 - b0, "stdout": out, "stderr": err}


def _row(m: dict, n: int) -> dict:
    return {"ok": m["rc"] == 0, "wall_s": round(m["wall_s"], 2), "host_cpu_s": round(m["cpu_s"], 2),
            "host_cpu_s_per_device": round(m["cpu_s"] / n, 3), "peak_host_rss_mb": round(m["peak_rss_mb"], 1),
            "bytes_sent_per_device": None if m["bytes"] is None else int(m["bytes"] / n)}


def run_size(n: int, work: Path, bundle, engines: list[str], health_runs: int) -> dict:
    from kit.ansible.export import export_playbook
    from kit.fleet.options import RolloutOptions
    from kit.testbed.sshd import SshdFactory

    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEKIT_RESULTS": str(work / f"results{n}.db")}
    row: dict = {"devices": n}
    with SshdFactory(work / f"sshd{n}") as factory:
        entries = factory.start(n)
        counter = WireCounter([factory.server(e).port for e in entries])
        try:
            if "native" in engines:
                inv = work / f"inv{n}.yaml"
                inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "home": f"{e.home}-native",
                                                                     "groups": ["bench"]} for e in entries}}))
                m = _measure([sys.executable, "-m", "kit", "rollout", str(bundle.path), "--group", "bench", "--json",
                              "--inventory", str(inv), "--parallel", "10", "--batch-size", "10",
                              "--health-runs", str(health_runs)], env, work, counter)
                doc = json.loads(m["stdout"]) if m["stdout"].strip() else {}
                row["native"] = {**_row(m, n), "updated": sum(d["status"] == "updated" for d in doc.get("devices", []))}
                print(f"native {n}: {row['native']}", file=sys.stderr)
            if "ansible" in engines:
                from dataclasses import replace

                out = export_playbook(bundle, [replace(e, home=f"{e.home}-ansible") for e in entries], "bench",
                                      work / f"play{n}", options=RolloutOptions(batch_size=10, max_parallel=10,
                                                                                health_runs=health_runs))
                mux = work / f"cp{n}"
                mux.mkdir()
                aenv = {**env, "ANSIBLE_CONFIG": str(out / "ansible.cfg"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(mux)}
                from kit.ansible.run import ansible_playbook

                m = _measure([ansible_playbook(), "rollout.yml"], aenv, out, counter, mux_dir=mux)
                updated = sum(json.loads(p.read_text()).get("outcome") == "updated" for p in (out / "results").glob("*.json"))
                row["ansible"] = {**_row(m, n), "updated": updated}
                if m["rc"]:
                    row["ansible"]["tail"] = (m["stdout"] + m["stderr"])[-800:]
                print(f"ansible {n}: {row['ansible']}", file=sys.stderr)
        finally:
            counter.close()
    if "native" in row and "ansible" in row:
        a, b = row["ansible"], row["native"]
        row["ratio_ansible_vs_native"] = {
            k: round(a[k] / b[k], 2) if a[k] and b[k] else None
            for k in ("wall_s", "host_cpu_s_per_device", "peak_host_rss_mb", "bytes_sent_per_device")}
    return row


def paper_estimate(rows: list[dict], bundle_bytes: int, cores: int, mb: float = 10.0, uplink_mbit: float = 100.0) -> dict:
    """Devices per minute for one host at `mb` MB on `uplink_mbit`, from the largest measured size."""
    biggest = max(rows, key=lambda r: r["devices"])
    out = {"bundle_mb": mb, "uplink_mbit_s": uplink_mbit, "host_cores": cores, "from_measured_devices": biggest["devices"]}
    for engine in ("native", "ansible"):
        r = biggest.get(engine)
        if not r or not r.get("bytes_sent_per_device"):
            continue
        # The bundle part of the bytes grows to `mb` (with the wire overhead the native engine shows,
        # ~5%); the rest (agent, Ansible's modules) stays. Host CPU is taken as proportional to bytes.
        bytes_dev = r["bytes_sent_per_device"] + (mb * 1e6 - bundle_bytes) * 1.05
        cpu_dev = r["host_cpu_s_per_device"] * bytes_dev / r["bytes_sent_per_device"]
        net = 60 * uplink_mbit * 1e6 / 8 / bytes_dev
        cpu = 60 * cores / cpu_dev
        limit = "uplink" if net <= cpu else "host CPU"
        out[engine] = {"bytes_per_device": int(bytes_dev), "host_cpu_s_per_device": round(cpu_dev, 3),
                       "devices_per_min_by_uplink": round(net, 1), "devices_per_min_by_host_cpu": round(cpu, 1),
                       "devices_per_min": round(min(net, cpu), 1), "binding_limit": limit,
                       "next_limit": "host CPU" if limit == "uplink" else "uplink",
                       "peak_rss_mb_at_10_parallel": r["peak_host_rss_mb"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50,100")
    ap.add_argument("--mb", type=float, default=5.0, help="approximate bundle size")
    ap.add_argument("--health-runs", type=int, default=5)
    ap.add_argument("--engines", default="native,ansible")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet.json"))
    args = ap.parse_args()
    sizes, engines = [int(s) for s in args.sizes.split(",")], args.engines.split(",")

    work = Path(tempfile.mkdtemp(prefix="ekbench-fleet-"))
    os.environ.setdefault("EDGEKIT_CONFIG_DIR", str(work / "config"))
    from kit.package.signing import ensure_keys
    from kit.testbed.bundles import make_bundle

    ensure_keys()
    bundle = make_bundle(work / "bundle", "bench5mb", hidden=max(1, int(args.mb * 1024 * 1024 / 1028)), seed=7)
    bundle_bytes = sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file())
    rows = []
    try:
        for n in sizes:
            rows.append(run_size(n, work, bundle, engines, args.health_runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {
        "benchmark": "fleet_native_vs_ansible", "bundle_bytes": bundle_bytes,
        "setup": f"loopback sshd devices on this host; canary 1, batches of 10, 10 at once; health gate "
                 f"({args.health_runs} timed runs); each engine from nothing (own agent home)",
        "cpu_count": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "results": rows, "paper_estimate": paper_estimate(rows, bundle_bytes, os.cpu_count() or 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
