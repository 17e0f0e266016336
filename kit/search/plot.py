"""The search's plot: latency vs accuracy (or agreement) of every candidate, the front, the choice."""

from __future__ import annotations

from pathlib import Path


def plot_front(result, path: str | Path) -> Path:
    """Latency vs accuracy of every candidate (marker area ~ size), the front joined, the choice starred
    (a kit.search.recipes.SearchResult)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled = all(c.accuracy is not None for c in result.candidates if c.p50_ms is not None)
    score = (lambda c: c.accuracy) if labelled else (lambda c: c.agreement)  # noqa: E731  unlabelled: agreement
    done = [c for c in result.candidates if c.p50_ms is not None and score(c) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if done:
        biggest = max(c.size_bytes or 1 for c in done)
        for c in done:
            colour = "tab:blue" if c.within_budget else "tab:gray"
            ax.scatter(c.p50_ms, 100 * score(c), s=40 + 400 * (c.size_bytes or 0) / biggest, color=colour, alpha=0.6,
                       edgecolors="black" if c.on_front else "none")
            ax.annotate(c.recipe, (c.p50_ms, 100 * score(c)), textcoords="offset points", xytext=(6, 4), fontsize=8)
        front = sorted((c for c in done if c.on_front), key=lambda c: c.p50_ms)
        if len(front) > 1:
            ax.plot([c.p50_ms for c in front], [100 * score(c) for c in front], "--", color="tab:orange", label="Pareto front")
        for c in done:
            if c.chosen:
                ax.scatter(c.p50_ms, 100 * score(c), marker="*", s=300, color="tab:red", label=f"chosen: {c.recipe}", zorder=5)
    if labelled and result.baseline_accuracy is not None:
        ax.axhline(100 * result.baseline_accuracy, color="green", lw=0.8, label="original model")
        if result.budget_top1_drop is not None:
            ax.axhline(100 * result.baseline_accuracy - result.budget_top1_drop, color="red", lw=0.8, ls=":",
                       label=f"budget (-{result.budget_top1_drop:g} pt)")
    ax.set_xlabel(f"latency p50 on {result.device} (ms)")
    ax.set_ylabel("top-1 accuracy (%)" if labelled else "top-1 agreement with the original (%)")
    if not labelled and result.budget_agreement is not None:
        ax.axhline(100 * result.budget_agreement, color="red", lw=0.8, ls=":", label=f"agreement floor {result.budget_agreement:.0%}")
    ax.set_title(f"Recipe search: {result.model} on {result.device} (marker area ~ size)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    tmp = path.with_name(path.stem + ".part.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
