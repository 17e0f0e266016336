"""The paper side of benchmarks/fleet.py: merging a run's rows into the recorded results, and from
the largest measured size, how many devices one host rolls out per minute at a 10 MB bundle on a
100 Mbit/s uplink, and which limit (uplink, host CPU, memory, ssh handshakes) binds first and next."""

from __future__ import annotations

import json
import os
from pathlib import Path


def merge_rows(path: Path, rows: list[dict]) -> tuple[list[dict], dict]:
    """The rows already in `path` (other sizes kept, a re-measured size replaced) plus `rows`."""
    old = json.loads(path.read_text()) if path.exists() else {}
    new_sizes = {r["devices"] for r in rows}
    kept = [r for r in old.get("results", []) if r["devices"] not in new_sizes]
    return sorted(kept + rows, key=lambda r: r["devices"]), old


def _mem_available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def paper_estimate(rows: list[dict], bundle_bytes: int, cores: int, mb: float = 10.0, uplink_mbit: float = 100.0,
                   parallel: int = 10) -> dict:
    """Devices per minute for one host at `mb` MB on `uplink_mbit`, from the largest measured size
    whose engine finished. Assumptions (all stated in the output):
      bytes: the bundle part of the measured bytes grows to `mb` with the wire overhead the native
        engine shows (~5%); the rest (agent, Ansible's modules, ssh) stays per device;
      host CPU: proportional to bytes (encryption + copying dominate; conservative for the fixed part);
      memory: the measured peak RSS at `parallel` devices at once, split per slot (base included, so an
        over-estimate per slot); slots free RAM allows, over the per-device time seen here (these
        devices share this host's CPU, so real ones hold a slot for less: a pessimistic rate);
      ssh handshakes: measured new TCP connections per device; their host CPU is already inside the
        host CPU figure, so they are reported as a rate, the device side limit being per device."""
    ram_mb = _mem_available_mb()
    out = {"bundle_mb": mb, "uplink_mbit_s": uplink_mbit, "host_cores": cores, "host_mem_available_mb": round(ram_mb),
           "assumptions": paper_estimate.__doc__.split("Assumptions (all stated in the output):", 1)[1].strip()}
    for engine in ("native", "ansible"):
        done = [r for r in rows if r.get(engine, {}).get("ok") and r[engine].get("bytes_sent_per_device")]
        if not done:
            continue
        biggest = max(done, key=lambda r: r["devices"])
        r = biggest[engine]
        bytes_dev = r["bytes_sent_per_device"] + (mb * 1e6 - bundle_bytes) * 1.05
        cpu_dev = r["host_cpu_s_per_device"] * bytes_dev / r["bytes_sent_per_device"]
        par = r.get("parallel", parallel)
        dev_s = r["wall_s"] * min(par, biggest["devices"]) / biggest["devices"]  # s one device holds a slot, here
        slot_mb = r["peak_host_rss_mb"] / par
        rates = {"uplink": 60 * uplink_mbit * 1e6 / 8 / bytes_dev, "host CPU": 60 * cores / cpu_dev,
                 "memory": (ram_mb / slot_mb) * 60 / dev_s}
        order = sorted(rates, key=rates.get)
        best = rates[order[0]]
        conns = r.get("connections_per_device")
        out[engine] = {
            "from_measured_devices": biggest["devices"], "bytes_per_device": int(bytes_dev),
            "host_cpu_s_per_device": round(cpu_dev, 3),
            **{f"devices_per_min_by_{k.replace(' ', '_').lower()}": round(v, 1) for k, v in rates.items()},
            "devices_per_min": round(best, 1), "binding_limit": order[0], "next_limit": order[1],
            "headroom_to_next_limit": round(rates[order[1]] / best, 1),
            "peak_rss_mb_at_parallel": r["peak_host_rss_mb"], "parallel": par,
            "rss_mb_per_slot": round(slot_mb, 1), "device_s_per_slot_here": round(dev_s, 1),
            "parallel_needed_for_that_rate": round(best * dev_s / 60, 1),
            "ssh_connections_per_device": conns,
            "ssh_handshakes_per_min_at_that_rate": None if conns is None else round(conns * best),
        }
    return out


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    """Merge the rows of a separate run (NEW, written by fleet.py --out NEW) into the recorded file."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("new")
    ap.add_argument("--into", default=str(Path(__file__).resolve().parent / "results" / "fleet.json"))
    ap.add_argument("--note", default=None, help="replace the recorded closing note")
    args = ap.parse_args()
    new = json.loads(Path(args.new).read_text())
    rows, old = merge_rows(Path(args.into), new["results"])
    if old and abs(old.get("bundle_bytes", 0) - new["bundle_bytes"]) > 0.01 * new["bundle_bytes"]:  # manifests vary a little
        raise SystemExit(f"{args.new}: bundle_bytes {new['bundle_bytes']} differs from {args.into}'s "
                         f"{old.get('bundle_bytes')}; rerun with the same --mb")
    doc = {**old, **{k: v for k, v in new.items() if k not in ("results", "paper_estimate", "note")},
           "results": rows, "paper_estimate": paper_estimate(rows, new["bundle_bytes"], new["cpu_count"] or 1)}
    doc.pop("load_avg_1m_at_end", None)  # per row now
    doc["note"] = args.note if args.note is not None else old.get("note", "")
    Path(args.into).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["paper_estimate"], indent=2))


if __name__ == "__main__":
    main()
