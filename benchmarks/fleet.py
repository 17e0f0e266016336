"""Fleet rollout benchmark: what one host pays per device, native `edgekit rollout` vs the exported
Ansible playbook (`edgekit ansible export` + ansible-playbook), side by side in one run.

For each fleet size (loopback sshd devices, a ~5 MB signed bundle), both engines roll the bundle
out from nothing (each engine gets its own agent home on every device, so neither finds the
other's work): canary 1, batches of 10, 10 hosts at once (forks 10), the same health gate.
Each engine runs as its own process tree (the CLI `python -m kit rollout`, or ansible-playbook with
its forks and ssh ControlPersist masters), and for it we report:
  wall_s, host_cpu_s_per_device (user+sys of that whole tree: getrusage(RUSAGE_CHILDREN) of the
  reaped processes, plus the ssh mux masters read from /proc before they are stopped),
  peak_host_rss_mb (the tree's summed RSS, sampled every 0.2 s), bytes_sent_per_device and
  connections_per_device (nftables counters on the devices' ports; null without nft), and the
  ratios ansible / native. Each row records its date and the load average at its start and end:
  rows merged from separate runs (--merge) say so. An engine still running at --max-engine-s is
  stopped (its tree's CPU read from /proc first); its row says "stopped" and counts what finished.
The devices (sshd + agents) run on this same host, so wall time mixes host and device work;
the host's own CPU per device is the figure that says how far one host goes.

From the measured figures, a paper estimate: devices per minute one host rolls out with a 10 MB
bundle on a 100 Mbit/s uplink (bytes and CPU scaled from the measured 5 MB figures), and which
limit binds next (benchmarks/fleet_paper.py). Writes benchmarks/results/fleet.json and prints it.

    python benchmarks/fleet.py [--sizes 1,10,50,100] [--mb 5] [--engines native,ansible]
        [--ansible-forks 10] [--max-engine-s 4500] [--out FILE] [--merge]
    --merge: keep the rows already in --out for other sizes (a re-measured size is replaced).
    The kit and agent measured are a snapshot of git HEAD (`git archive`, the commit is recorded), so
    edits in the working tree during a long run cannot race the pushes; --live-tree uses the tree as is.
    100 loopback devices: 100 sshd's (MaxStartups 100:30:200 each), ~10 fds per live session;
    the soft RLIMIT_NOFILE is raised to the hard limit at start.
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
from benchmarks.fleet_paper import load_avg, merge_rows, paper_estimate  # noqa: E402
from benchmarks.fleet_wire import WireCounter, proc_cpu_s, tree_cpu_s, tree_rss_mb  # noqa: E402


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _measure(cmd: list[str], env: dict, cwd: Path, counter: WireCounter, mux_dir: Path | None = None,
             max_s: float | None = None) -> dict:
    """Run one engine as a process tree; wall, CPU (tree + mux masters), peak summed RSS, bytes, connections.
    Past `max_s` the tree is stopped (CPU read from /proc first) and the result says stopped."""
    b0, k0, c0 = counter.read(), counter.connections(), _children_cpu()
    peak = [0.0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb(proc.pid, mux_dir))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stopped_cpu = None
    try:
        out, err = proc.communicate(timeout=max_s)
    except subprocess.TimeoutExpired:
        stopped_cpu = tree_cpu_s(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    cpu = _children_cpu() - c0 if stopped_cpu is None else stopped_cpu
    mux_cpu = 0.0
    if mux_dir is not None:  # ControlPersist masters outlive the play: count them, then stop them
        for pid, secs in proc_cpu_s(mux_dir).items():
            mux_cpu += secs
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    b1, k1 = counter.read(), counter.connections()
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": cpu + mux_cpu, "mux_cpu_s": mux_cpu, "peak_rss_mb": peak[0],
            "bytes": None if b0 is None or b1 is None else b1 - b0,
            "conns": None if k0 is None or k1 is None else k1 - k0,
            "stopped": stopped_cpu is not None, "stdout": out, "stderr": err}


def _row(m: dict, n: int, parallel: int) -> dict:
    row = {"ok": m["rc"] == 0, "wall_s": round(m["wall_s"], 2), "host_cpu_s": round(m["cpu_s"], 2),
           "host_cpu_s_per_device": round(m["cpu_s"] / n, 3), "peak_host_rss_mb": round(m["peak_rss_mb"], 1),
           "bytes_sent_per_device": None if m["bytes"] is None else int(m["bytes"] / n),
           "connections_per_device": None if m["conns"] is None else round(m["conns"] / n, 2), "parallel": parallel}
    if m["stopped"]:
        row.update(ok=False, stopped=f"stopped at the --max-engine-s cap after {m['wall_s']:.0f} s; "
                                     "per-device figures divide by all devices, 'updated' says how many finished")
    return row


def run_size(n: int, work: Path, bundle, engines: list[str], health_runs: int, forks: int = 10,
             max_s: float | None = None) -> dict:
    from kit.ansible.export import export_playbook
    from kit.fleet.options import RolloutOptions
    from kit.testbed.sshd import SshdFactory

    env = {**os.environ, "PYTHONPATH": sys.path[0], "EDGEKIT_RESULTS": str(work / f"results{n}.db")}
    row: dict = {"devices": n, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "load_avg_1m_at_start": load_avg()}
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
                              "--health-runs", str(health_runs)], env, work, counter, max_s=max_s)
                try:
                    doc = json.loads(m["stdout"]) if m["stdout"].strip() else {}
                except json.JSONDecodeError:
                    doc = {}
                row["native"] = {**_row(m, n, 10), "updated": sum(d["status"] == "updated" for d in doc.get("devices", []))}
                if m["rc"]:
                    errs = sorted({(d.get("error") or "")[:160] for d in doc.get("devices", []) if d.get("error")})
                    row["native"]["tail"] = (errs[:3] or [m["stderr"][-800:]])
                print(f"native {n}: {row['native']}", file=sys.stderr)
            if "ansible" in engines:
                from dataclasses import replace

                out = export_playbook(bundle, [replace(e, home=f"{e.home}-ansible") for e in entries], "bench",
                                      work / f"play{n}", options=RolloutOptions(batch_size=forks, max_parallel=forks,
                                                                                health_runs=health_runs))
                mux = work / f"cp{n}"
                mux.mkdir()
                aenv = {**env, "ANSIBLE_CONFIG": str(out / "ansible.cfg"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(mux)}
                from kit.ansible.run import ansible_playbook

                m = _measure([ansible_playbook(), "rollout.yml"], aenv, out, counter, mux_dir=mux, max_s=max_s)
                updated = 0
                for p in (out / "results").glob("*.json"):
                    try:
                        updated += json.loads(p.read_text()).get("outcome") == "updated"
                    except (OSError, json.JSONDecodeError):
                        pass
                row["ansible"] = {**_row(m, n, forks), "updated": updated}
                if m["rc"]:
                    row["ansible"]["tail"] = (m["stdout"] + m["stderr"])[-800:]
                print(f"ansible {n}: {row['ansible']}", file=sys.stderr)
        finally:
            counter.close()
    row["load_avg_1m_at_end"] = load_avg()
    if "native" in row and "ansible" in row and not any(row[e].get("stopped") for e in ("native", "ansible")):
        a, b = row["ansible"], row["native"]
        row["ratio_ansible_vs_native"] = {
            k: round(a[k] / b[k], 2) if a[k] and b[k] else None
            for k in ("wall_s", "host_cpu_s_per_device", "peak_host_rss_mb", "bytes_sent_per_device")}
    return row


def _snapshot(dest: Path) -> str:
    """kit/ and device_agents/ of git HEAD into dest, first on sys.path (and the engines' PYTHONPATH)."""
    dest.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "kit", "device_agents"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True)
    sys.path.insert(0, str(dest))
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50,100")
    ap.add_argument("--mb", type=float, default=5.0, help="approximate bundle size")
    ap.add_argument("--health-runs", type=int, default=5)
    ap.add_argument("--engines", default="native,ansible")
    ap.add_argument("--ansible-forks", type=int, default=10, help="Ansible forks = its serial batch size (native: 10)")
    ap.add_argument("--max-engine-s", type=float, default=4500.0, help="stop an engine still running after this")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet.json"))
    ap.add_argument("--merge", action="store_true", help="keep the rows already in --out for other sizes")
    ap.add_argument("--note", default="", help="a closing note to record")
    ap.add_argument("--live-tree", action="store_true", help="measure the working tree, not a snapshot of HEAD")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes, engines = [int(s) for s in args.sizes.split(",")], args.engines.split(",")

    work = Path(tempfile.mkdtemp(prefix="ekbench-fleet-"))
    commit = _snapshot(work / "src") if not args.live_tree else "working tree"
    os.environ.setdefault("EDGEKIT_CONFIG_DIR", str(work / "config"))
    from kit.package.signing import ensure_keys
    from kit.testbed.bundles import make_bundle

    ensure_keys()
    bundle = make_bundle(work / "bundle", "bench5mb", hidden=max(1, int(args.mb * 1024 * 1024 / 1028)), seed=7)
    bundle_bytes = sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file())
    rows = []
    try:
        for n in sizes:
            rows.append({**run_size(n, work, bundle, engines, args.health_runs, args.ansible_forks, args.max_engine_s),
                         "kit": commit})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    old: dict = {}
    if args.merge:
        rows, old = merge_rows(Path(args.out), rows)
    doc = {
        "benchmark": "fleet_native_vs_ansible", "bundle_bytes": bundle_bytes,
        "setup": f"loopback sshd devices on this host; canary 1, batches of 10, 10 at once; health gate "
                 f"({args.health_runs} timed runs); each engine from nothing (own agent home); rows carry their "
                 f"own date and load average",
        "cpu_count": os.cpu_count(),
        "results": rows, "paper_estimate": paper_estimate(rows, bundle_bytes, os.cpu_count() or 1),
        "note": args.note or old.get("note", ""),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
