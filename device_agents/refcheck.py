"""The reference check of a bundle with several outputs: every output against its reference file.

A bundle with several inputs/outputs (manifest `reference.inputs` / `reference.outputs` lists,
`reference.atols` one tolerance per output) is checked output by output; the check passes when
every output is close. The top-level fields (max_abs_err, top1_match) are the first output's, as
for a single-output bundle, and `per_output` lists {name, passed, max_abs_err, atol, top1_match,
sqnr_db} (sqnr_db None when the output equals its reference exactly or the reference is all zeros). stdlib + numpy only.
"""

from __future__ import annotations


def is_multi(manifest: dict) -> bool:
    return "outputs" in manifest["reference"] and "output" not in manifest["reference"]


def output_names(manifest: dict, count: int) -> list:
    names = [o.get("name") for o in manifest.get("outputs") or [] if isinstance(o, dict)]
    return names if len(names) == count and all(isinstance(n, str) for n in names) else [f"output_{j}" for j in range(count)]


def _row(name: str, out, ref, atol: float, rtol: float) -> dict:
    import numpy as np

    out = np.asarray(out)
    if out.shape != ref.shape:
        return {"name": name, "passed": False, "max_abs_err": None,
                "reason": f"output shape {list(out.shape)} != reference {list(ref.shape)}"}
    a, b = out.astype(np.float64), ref.astype(np.float64)
    err = float(np.max(np.abs(a - b))) if out.size else 0.0
    noise, signal = float(np.sum((a - b) ** 2)), float(np.sum(b ** 2))
    sqnr = None if noise == 0 or signal == 0 else round(float(10 * np.log10(signal / noise)), 2)
    return {"name": name, "passed": bool(np.allclose(out, ref, atol=atol, rtol=rtol)), "max_abs_err": err,
            "atol": atol, "top1_match": bool(out.size and np.argmax(out) == np.argmax(ref)), "sqnr_db": sqnr}


def check_outputs(outs: list, refs: list, manifest: dict) -> dict:
    ref = manifest["reference"]
    atols = ref.get("atols") if isinstance(ref.get("atols"), list) and len(ref["atols"]) == len(refs) else [ref["atol"]] * len(refs)
    if len(outs) != len(refs):
        return {"passed": False, "max_abs_err": None, "atol": ref["atol"], "rtol": ref["rtol"], "per_output": [],
                "reason": f"the model gave {len(outs)} output(s), the reference has {len(refs)}"}
    names = output_names(manifest, len(refs))
    rows = [_row(n, o, r, float(t), float(ref["rtol"])) for n, o, r, t in zip(names, outs, refs, atols)]
    check = {"passed": all(r["passed"] for r in rows), "max_abs_err": rows[0]["max_abs_err"] if rows else None,
             "atol": ref["atol"], "rtol": ref["rtol"], "top1_match": rows[0].get("top1_match", False) if rows else False,
             "per_output": rows}
    failed = [r["name"] for r in rows if not r["passed"]]
    if failed:
        check["reason"] = f"output(s) {', '.join(failed)} differ from the reference beyond atol/rtol"
    return check
