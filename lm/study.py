"""Hyper-parameter studies (``-m hparams_search=...``, Hydra's Optuna sweeper) read back from their folders.

A study's folder is a multirun folder whose numbered trial folders are ordinary runs (lm/report.py reads
them); each trial's ``.hydra/hydra.yaml`` names the sweeper and the searched keys (``hydra.sweeper.params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lm.report import Run, format_number, pyplot


@dataclass
class Study:
    path: Path
    params: list[str]  # the searched config keys, e.g. loss.alpha
    objective: str  # the metrics.json key train.py returned (config key `objective`)
    direction: str  # minimize | maximize
    trials: list[tuple[dict[str, str], float, Run]]  # (searched values, objective or nan, run), in trial order

    @property
    def best(self) -> tuple[dict[str, str], float, Run] | None:
        done = [t for t in self.trials if not math.isnan(t[1])]
        if not done:
            return None
        pick = min if self.direction == "minimize" else max
        return pick(done, key=lambda t: t[1])


def find_studies(runs: list[Run]) -> list[Study]:
    """The studies that ``runs`` (from lm.report.find_runs) are trials of, each with all its trials."""
    from omegaconf import OmegaConf

    by_folder: dict[Path, list[Run]] = {}
    for run in runs:
        by_folder.setdefault(run.path.parent, []).append(run)
    studies = []
    for folder, trials in sorted(by_folder.items()):
        trials.sort(key=lambda r: _trial_number(r.path))
        hydra_yaml = trials[0].path / ".hydra" / "hydra.yaml"
        if not hydra_yaml.is_file():
            continue
        sweeper = OmegaConf.load(hydra_yaml).hydra.get("sweeper", {})
        if "optuna" not in str(sweeper.get("_target_", "")).lower():
            continue
        given = [dict(o.partition("=")[::2] for o in run.metrics.get("overrides") or []) for run in trials]
        # The configured ranges, and the ones given on the command line: keys whose value differs between trials.
        params = list(sweeper.get("params") or {})
        params += sorted({k for g in given for k in g if k not in params and len({h.get(k) for h in given}) > 1})
        if not params:
            continue
        config = OmegaConf.load(trials[0].path / ".hydra" / "config.yaml")
        objective = config.get("objective", "val/ppl")
        rows = []
        for run, values in zip(trials, given):
            value = run.metrics.get(objective) if run.finished else None
            rows.append(({k: values.get(k, "?") for k in params}, math.nan if value is None else float(value), run))
        studies.append(Study(folder, params, objective, str(sweeper.get("direction", "minimize")), rows))
    return studies


def _trial_number(path: Path) -> int:
    return int(path.name) if path.name.isdigit() else -1


def study_table(study: Study) -> str:
    """The trials in order, their searched values and objective; the best one marked."""
    best = study.best
    lines = [f"Study {study.path} ({study.direction} {study.objective}, {len(study.trials)} trials)", "",
             "| trial | " + " | ".join(f"`{p}`" for p in study.params) + f" | {study.objective} |",
             "|---" * (len(study.params) + 2) + "|"]
    for values, objective, run in study.trials:
        mark = " (best)" if best is not None and run is best[2] else ""
        shown = format_number(objective, 2) if not math.isnan(objective) else "failed or unfinished"
        lines.append(f"| {run.path.name} | " + " | ".join(values[p] for p in study.params) + f" | {shown}{mark} |")
    return "\n".join(lines) + "\n"


def study_series(study: Study) -> dict[str, list[tuple[float, float]]]:
    """searched key -> [(its value, objective)] over the trials that finished with a numeric value."""
    series = {}
    for p in study.params:
        points = []
        for values, objective, _ in study.trials:
            try:
                points.append((float(values[p]), objective))
            except ValueError:  # a categorical choice: no axis to draw it on
                continue
        points = [pt for pt in points if not math.isnan(pt[1])]
        if points:
            series[p] = sorted(points)
    return series


def plot_study(study: Study, out: Path) -> Path | None:
    """The objective against each searched value, one panel per key (needs matplotlib)."""
    series = study_series(study)
    if not series:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 4), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items()):
        ax.plot([x for x, _ in points], [y for _, y in points], "o")
        ax.set(xlabel=key, ylabel=study.objective)
    fig.suptitle(f"Study {study.path.name}: {study.objective} of each trial")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
