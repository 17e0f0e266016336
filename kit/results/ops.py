"""Per-operator profiles in the store: the one for a measurement (or the newest profiled
measurement of the same artifact, device and threads), and the lined-up tables of a comparison."""

from __future__ import annotations

from kit.profiles import compare_ops


def profile_for(store, row: dict) -> dict | None:
    """`row`: a measurement row or a compare summary (measurement_id, sha256, device, threads)."""
    mid = row.get("measurement_id", row.get("id"))
    found = store.profile(mid) if mid is not None else None
    if found is not None:
        return found
    ids = store.db.execute(
        "SELECT p.measurement_id FROM profiles p JOIN measurements m ON m.id = p.measurement_id JOIN artifacts a ON "
        "a.id = m.artifact_id JOIN devices d ON d.id = m.device_id WHERE a.sha256 = ? AND d.name = ? AND m.threads = ? "
        "ORDER BY p.measurement_id DESC LIMIT 1", (row.get("sha256"), row.get("device"), row.get("threads"))).fetchone()
    return store.profile(ids[0]) if ids else None


def comparison_ops(store, comparison) -> list[dict]:
    """For each pair of a kit.results.compare.Comparison: {key, a, b, ops (compare_ops) | missing}."""
    out = []
    for r in comparison.rows:
        pa, pb = profile_for(store, r.a), profile_for(store, r.b)
        if not pa or not pb or pa.get("error") or pb.get("error"):
            which = " and ".join(n for n, p in (("A", pa), ("B", pb)) if not p or p.get("error"))
            out.append({"key": r.key, "a": r.a["variant"], "b": r.b["variant"], "ops": None,
                        "missing": f"no profile for {which}; bench it with --profile"})
            continue
        out.append({"key": r.key, "a": r.a["variant"], "b": r.b["variant"], "ops": compare_ops(pa, pb)})
    return out
