"""Collect finished runs into the paper's table: variant, size, perplexities, the paper's value, plots."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# Inan et al. (2017), PTB, valid / test perplexity (../shared/docs/METHOD.md).
PAPER_PTB = {
    ("small", "VD"): (92.6, 87.3), ("small", "AL"): (86.3, 82.9),
    ("small", "RE"): (89.9, 85.1), ("small", "REAL"): (86.3, 82.7),
    ("medium", "VD"): (82.0, 77.7), ("medium", "AL"): (77.4, 74.7),
    ("medium", "RE"): (77.1, 73.9), ("medium", "REAL"): (75.7, 73.2),
    ("large", "VD"): (76.8, 72.6), ("large", "AL"): (74.5, 71.2),
    ("large", "RE"): (72.5, 69.0), ("large", "REAL"): (71.1, 68.5),
}
VARIANTS = {("untied", "ce"): "VD", ("untied", "augmented"): "AL", ("tied", "ce"): "RE", ("tied", "augmented"): "REAL"}
ORDER = ["VD", "AL", "RE", "REAL"]


@dataclass
class Run:
    path: Path
    metrics: dict
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val/ppl)

    @property
    def variant(self) -> str:
        return VARIANTS.get((self.metrics.get("model"), self.metrics.get("loss")), "?")

    @property
    def size(self) -> str:
        return self.metrics.get("size") or "?"

    @property
    def label(self) -> str:
        alpha = self.metrics.get("alpha")
        return f"{self.size} {self.variant}" + (f" alpha={alpha}" if self.variant in ("AL", "REAL") else "")


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run folder (one holding metrics.json) at or below the given paths."""
    runs = []
    for root in map(Path, paths):
        for metrics_file in sorted(root.rglob("metrics.json")) if root.is_dir() else []:
            run = Run(metrics_file.parent, json.loads(metrics_file.read_text()))
            run.val_curve = _val_curve(run.path / "csv" / "metrics.csv")
            runs.append(run)
    return runs


def _val_curve(path: Path) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [(int(r["epoch"]), float(r["val/ppl"])) for r in csv.DictReader(f) if r.get("val/ppl")]


def _fmt(x, digits=1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def markdown_table(runs: list[Run]) -> str:
    runs = sorted(runs, key=lambda r: (r.size, ORDER.index(r.variant) if r.variant in ORDER else 9, str(r.path)))
    lines = [
        "| variant | size | alpha | params | epochs | best val/ppl | test/ppl | paper test | difference | wall (h) | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        m = r.metrics
        paper = PAPER_PTB.get((r.size, r.variant), (None, None))[1]
        diff = m["test/ppl"] - paper if paper is not None and m.get("test/ppl") is not None else None
        lines.append(
            f"| {r.variant} | {r.size} | {m.get('alpha') if r.variant in ('AL', 'REAL') else '-'} | "
            f"{_fmt(m.get('params'), 0)} | {m.get('epochs')} | {_fmt(m.get('val/ppl'))} | {_fmt(m.get('test/ppl'))} | "
            f"{_fmt(paper)} | {'-' if diff is None else f'{diff:+.1f}'} | {_fmt(m.get('wall_s', 0) / 3600, 2)} | "
            f"`{r.path}` |"
        )
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib  # the [report] extra; imported here so that the table needs no matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_val_curves(runs: list[Run], out: Path) -> Path | None:
    plt = _pyplot()
    curves = [r for r in runs if r.val_curve]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in curves:
        ax.plot([e + 1 for e, _ in r.val_curve], [p for _, p in r.val_curve], marker="o", markersize=3,
                label=f"{r.label} ({r.path.name})")
    ax.set(xlabel="epoch", ylabel="validation perplexity", yscale="log", title="Validation perplexity per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_alpha_sweep(runs: list[Run], out: Path) -> Path | None:
    """val/test perplexity against alpha, one pair of lines per (size, variant) swept over 2+ alphas."""
    plt = _pyplot()
    groups = defaultdict(list)
    for r in runs:
        if r.variant in ("AL", "REAL") and r.metrics.get("alpha") is not None:
            groups[(r.size, r.variant)].append(r)
    groups = {k: sorted(v, key=lambda r: r.metrics["alpha"]) for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (size, variant), rs in groups.items():
        alphas = [r.metrics["alpha"] for r in rs]
        ax.plot(alphas, [r.metrics["val/ppl"] for r in rs], "o-", label=f"{size} {variant} val")
        ax.plot(alphas, [r.metrics["test/ppl"] for r in rs], "s--", label=f"{size} {variant} test")
    ax.set(xlabel="alpha", ylabel="perplexity", title="Perplexity against alpha")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
