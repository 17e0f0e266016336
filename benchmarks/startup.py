"""CLI start-up cost: how much slower than a bare `python -c "import typer, rich"` are the light
commands a user runs most (`edgekit --help`, `recipes list`, `devices list`, `results list`)?

Each command runs as its own process through the installed `edgekit` script, output to /dev/null
(so tables render as when piped), with a temporary config folder holding one device and a results
store holding one run. Rounds alternate the commands so drift on a shared machine hits all alike;
one untimed warm-up round first (page cache). Per command: median wall time, its ratio to the
baseline's median, and the median peak RSS (wait4's rusage of that process, started from a
small launcher so the RSS Linux carries over from the forking process does not count).

    python benchmarks/startup.py [--rounds 7] [--record]

Prints JSON; --record also writes it to benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import cpu_facts, emit  # noqa: E402

COMMANDS = {"--help": ["--help"], "recipes list": ["recipes", "list"], "devices list": ["devices", "list"],
            "results list": ["results", "list"]}
BASELINE = "python -c 'import typer, rich'"


def _edgekit() -> str:
    script = Path(sys.executable).parent / "edgekit"
    if not script.is_file():
        sys.exit(f"startup.py: no edgekit script next to {sys.executable}; install the kit (pip install -e .) first")
    return str(script)


def _user_env(folder: Path) -> dict:
    """A config folder with one device and a results store with one run, like a user's after a first bench."""
    env = {**os.environ, "EDGEKIT_CONFIG_DIR": str(folder / "config"), "EDGEKIT_RESULTS": str(folder / "results.db")}
    subprocess.run([_edgekit(), "devices", "add", "pi5", "10.0.0.5", "--kind", "rpi5"], env=env, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-c", "import os; from kit.results.store import ResultsStore; "
                    "s = ResultsStore(os.environ['EDGEKIT_RESULTS']); s.finish_run(s.start_run('bench', 'startup'))"],
                   env=env, check=True, capture_output=True)
    return env


# Runs one command and reports its wall time and peak RSS. Peak RSS has to come from a small parent:
# Linux folds the RSS high-water mark of the process that forks into the child's (through exec), so
# measured from this script (numpy loaded) every command would show at least this script's ~33 MiB.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps([time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status)]))
"""


def _run_once(argv: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], env=env, capture_output=True, text=True, check=True)
    wall, rss_kib, rc = json.loads(out.stdout)
    if rc != 0:
        sys.exit(f"startup.py: {' '.join(argv)} exited {rc}")
    return wall, rss_kib


def measure(rounds: int) -> dict:
    edgekit = _edgekit()
    with tempfile.TemporaryDirectory() as tmp:
        env = _user_env(Path(tmp))
        runs = {BASELINE: [sys.executable, "-c", "import typer, rich"]}
        runs.update({f"edgekit {name}": [edgekit, *argv] for name, argv in COMMANDS.items()})
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
        for round_ in range(rounds + 1):
            for name, argv in runs.items():
                sample = _run_once(argv, env)
                if round_:  # round 0 warms the page cache
                    samples[name].append(sample)
    base = statistics.median(wall for wall, _ in samples[BASELINE])
    out = {}
    for name, rows in samples.items():
        wall = statistics.median(w for w, _ in rows)
        out[name] = {"median_s": round(wall, 4), "min_s": round(min(w for w, _ in rows), 4),
                     "ratio_to_baseline": round(wall / base, 2),
                     "peak_rss_mib": round(statistics.median(r for _, r in rows) / 1024, 1)}
    return {"benchmark": "startup", "baseline": BASELINE, "rounds": rounds, "python": sys.version.split()[0],
            "machine": cpu_facts(), "commands": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed runs of each command (median reported)")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/startup.json")
    args = ap.parse_args()
    doc = measure(args.rounds)
    emit(doc)
    if args.record:
        path = HERE / "results" / "startup.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"recorded in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
