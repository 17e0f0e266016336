"""The native .pte runner on the device side: where it lives, when to use it, how to call it.

The runner (runner.cpp beside this file, built by the host's kit.native per architecture) arrives
in <agent home>/native/<digest>/ (edgekit-runner, lib/, runner.json), pushed like the agent:
content-addressed, sha256-checked on the device, installed by an atomic rename that writes the
digest marker last. The host names the digest it pushed in the bench option `native_runner`; the
agent uses that folder only when its marker says so. device_agents.bench runs the runner under the
same sandbox as the Python child (_preexec: own session, open files, file size, no core files; the
runner caps its own address space and CPU time after start-up, as the Python child does after import).
"""

from __future__ import annotations

import json
import os
import re

from device_agents.bundle import file_path
from device_agents.errors import AgentError
from device_agents.protocol import DIGEST_FILE, agent_home

RUNNER = "edgekit-runner"
PTE_RUNTIMES = ("python", "native", "auto")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def runner_dir(digest: str, home: str | None = None) -> str:
    return os.path.join(agent_home(home), "native", digest)


def installed(digest: str | None, home: str | None = None) -> str | None:
    """The runner folder for `digest` if it is fully installed here, else None."""
    if not digest or not _HEX64.match(digest):
        return None
    folder = runner_dir(digest, home)
    try:
        with open(os.path.join(folder, DIGEST_FILE)) as f:
            marker = f.read(200).strip()
    except OSError:
        return None
    runner = os.path.join(folder, RUNNER)
    return folder if marker == digest and os.access(runner, os.X_OK) else None


def check_options(pte_runtime: str, native_runner: str | None) -> None:
    if pte_runtime not in PTE_RUNTIMES:
        raise AgentError("bad_option", f"pte_runtime {pte_runtime!r} must be one of {', '.join(PTE_RUNTIMES)}")
    if native_runner is not None and not _HEX64.match(native_runner):
        raise AgentError("bad_option", f"native_runner {native_runner[:70]!r} must be the runner folder's sha256 digest")


def choose(manifest: dict, opts) -> str | None:
    """The runner folder to use for this bench, or None for the Python child. `native` without an
    installed runner is an error; `auto` falls back to the Python bindings."""
    if manifest["runtime"]["name"] != "executorch" or opts.pte_runtime == "python":
        return None
    folder = installed(opts.native_runner)
    if folder is None and opts.pte_runtime == "native":
        what = f"runner {opts.native_runner[:12]}" if opts.native_runner else "runner (no native_runner digest was given)"
        raise AgentError("runtime_missing", f"pte_runtime=native but the native {what} is not installed under "
                                            f"{os.path.join(agent_home(), 'native')}; bench from the kit, which pushes it, "
                                            f"or use pte_runtime python")
    return folder


def command(folder: str, bundle: str, manifest: dict, opts, out_dir: str) -> list[str]:
    """argv for the runner: every value from the verified manifest or validated options, no shell."""
    ref = manifest["reference"]
    if "inputs" in ref and "input" not in ref:  # several inputs/outputs: every input in order; the runner
        # checks output 0 and saves every output, which check_outputs then compares (device_agents.refcheck)
        feed = [a for f in ref["inputs"] for a in ("--input", file_path(bundle, f))]
        first, atol = ref["outputs"][0], (ref.get("atols") or [ref["atol"]])[0]
    else:
        feed, first, atol = ["--input", file_path(bundle, ref["input"])], ref["output"], ref["atol"]
    cmd = [os.path.join(folder, RUNNER), "--model", file_path(bundle, manifest["model"]["file"]),
           "--sha256", manifest["model"]["sha256"], *feed,
           "--reference-output", file_path(bundle, first), "--atol", repr(float(atol)),
           "--rtol", repr(float(ref["rtol"])), "--out-dir", out_dir, "--threads", str(opts.threads),
           "--warmup", str(opts.warmup), "--runs", str(opts.runs), "--min-time-s", repr(opts.min_time_s),
           "--max-runs", str(opts.max_runs), "--deadline-s", repr(opts.deadline_s),
           "--max-memory-mb", str(opts.max_memory_mb), "--max-open-files", str(opts.max_open_files),
           "--max-file-mb", str(opts.max_file_mb)]
    if opts.max_cpu_s is not None:
        cmd += ["--max-cpu-s", repr(float(opts.max_cpu_s))]
    if opts.input_shape is not None:
        cmd += ["--input-shape", ",".join(str(v) for v in opts.input_shape)]
    return cmd


def parse(out: bytes) -> dict | None:
    """The runner's one JSON document ({"ok": ..., "result"|"error": ...}), None if it printed none."""
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("ok"), bool) else None


def info(folder: str) -> dict:
    """runner.json of the folder (arch, executorch version, source hash), {} when unreadable."""
    try:
        with open(os.path.join(folder, "runner.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def error_detail(f) -> str:
    """From the runner's stderr file: ExecuTorch's last error line ("E 00:00:00.001 executorch:
    program.cpp:184] Verification failed; ...") without its prefix; "" when it logged no error."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 8192))
    errors = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.startswith("E ")]
    return errors[-1].split("] ", 1)[-1][:300] if errors else ""


def check_outputs(result: dict, bundle: str, manifest: dict, out_dir: str) -> None:
    """Several outputs: every output file the runner saved (in `out_dir`) against its reference;
    replaces the runner's check of output 0 (device_agents.refcheck). Called before out_dir goes."""
    import numpy as np

    from device_agents import refcheck

    ref = manifest["reference"]
    outs = []
    for p in result.get("outputs") or []:
        path = os.path.realpath(p)
        if os.path.dirname(path) != os.path.realpath(out_dir):
            raise AgentError("run_failed", f"the native runner wrote an output outside its folder: {p}")
        outs.append(np.load(path, allow_pickle=False))
    refs = [np.load(file_path(bundle, f), allow_pickle=False) for f in ref["outputs"]]
    result["reference_check"] = refcheck.check_outputs(outs, refs, manifest)
    result["input_shapes"] = [list(np.load(file_path(bundle, f), mmap_mode="r", allow_pickle=False).shape)
                              for f in ref["inputs"]]


def finish(result: dict, folder: str) -> dict:
    """The runner's result as the agent reports it: the output files are gone with their temporary
    folder, the runner's build is named."""
    result.pop("outputs", None)
    meta = info(folder)
    result["native_runner"] = {"digest": os.path.basename(folder), "arch": meta.get("arch"),
                               "executorch": meta.get("executorch"), "source_sha256": meta.get("source_sha256")}
    return result
