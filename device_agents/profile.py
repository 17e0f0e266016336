"""`bench --profile`: extra profiled runs AFTER the timed ones, in a child of their own (the timed
child never has a profiler attached, so its figures stay clean), and the raw profile in the reply.

The profiled child is the same sandboxed child with the runtime's profiler on: the native runner's
`--etdump` (ExecuTorch ETDump, with XNNPACK's per-operator events), ExecuTorch's Python bindings
with ETDump enabled, or ONNX Runtime's profiler (SessionOptions.enable_profiling, its trace JSON).
Nothing is parsed here (the host does that, kit.profiles): the bytes come back zlib-compressed and
base64-encoded, at most `profile_max_kb` KiB compressed; over that the reply says so instead.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import zlib
from dataclasses import replace

from device_agents.errors import AgentError

FORMATS = {"executorch": "etdump", "onnxruntime": "ort-trace-json"}


def collect(run_child, opts, timed: dict) -> dict:
    """run_child(opts, profile_path) -> result of the profiled child. Returns the profile document."""
    runtime = timed.get("runtime")
    fmt = FORMATS.get(runtime)
    popts = replace(opts, runs=max(2, opts.profile_runs), warmup=1, min_time_s=0.0, max_runs=max(2, opts.profile_runs),
                    power=False, profile=False)
    doc = {"format": fmt, "runs": popts.runs, "warmup": popts.warmup, "pte_runtime": timed.get("pte_runtime")}
    folder = tempfile.mkdtemp(prefix="edgekit-profile-")
    try:
        path = os.path.join(folder, "profile.etdp" if fmt == "etdump" else "profile.json")
        try:
            res = run_child(popts, path)
        except AgentError as e:
            return {**doc, "error": f"the profiled runs failed ({e.code}): {e.message}"}
        if not os.path.isfile(path):
            return {**doc, "error": res.get("etdump_reason") or "the runtime wrote no profile"}
        with open(path, "rb") as f:
            raw = f.read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    packed = zlib.compress(raw, 6)
    doc.update({"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "latency": res.get("latency"),
                "first_inference_ms": res.get("first_inference_ms")})
    if len(packed) > opts.profile_max_kb * 1024:
        return {**doc, "error": f"the profile is {len(packed) // 1024} KiB compressed, over profile_max_kb="
                                f"{opts.profile_max_kb}; ask for fewer profile_runs or a larger cap"}
    return {**doc, "encoding": "zlib+base64", "data": base64.b64encode(packed).decode("ascii")}
