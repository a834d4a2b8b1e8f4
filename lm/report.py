"""Collect finished runs into the paper's table: variant, size, perplexities, the paper's value, plots."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# Inan et al. (2017), PTB, valid / test perplexity as the paper reports them.
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


CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Run:
    path: Path
    metrics: dict
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val/ppl)
    # "key=value" where the run's config differs from what its preset composes today; None: not known
    preset_diff: tuple[str, ...] | None = None
    seed: int | str | None = None  # from its Hydra config, else its overrides (as written); None: not known

    @property
    def finished(self) -> bool:
        return not self.metrics.get("unfinished", False)

    @property
    def tested(self) -> bool:
        """Finished, with a test perplexity: what sweeps and repeats compare."""
        return self.finished and self.metrics.get("test/ppl") is not None

    @property
    def variant(self) -> str:
        return VARIANTS.get((self.metrics.get("model"), self.metrics.get("loss")), "?")

    @property
    def size(self) -> str:
        return self.metrics.get("size") or "?"

    @property
    def alpha(self) -> float | None:
        """The augmented loss's alpha; None for the cross-entropy variants (VD, RE)."""
        return self.metrics.get("alpha") if self.variant in ("AL", "REAL") else None

    @property
    def stage(self) -> int:
        """2 for a run started from another run's weights (init_from: the paper's second training run), else 1."""
        return 2 if self.metrics.get("init_from") else 1

    @property
    def label(self) -> str:
        stage = " stage 2" if self.stage == 2 else ""
        return f"{self.size} {self.variant}{stage}" + (f" alpha={self.alpha}" if self.alpha is not None else "")


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run folder at or below the given paths: finished runs (with metrics.json) and unfinished
    ones (a Hydra config and at least one validation in csv/metrics.csv, no metrics.json yet)."""
    folders = set()
    for root in map(Path, paths):
        if root.is_dir():
            folders.update(f.parent for f in root.rglob("metrics.json"))
            folders.update(f.parent.parent for f in root.rglob(".hydra/config.yaml"))
    runs = []
    for folder in sorted(folders):
        curve = _val_curve(folder / "csv" / "metrics.csv")
        metrics = _read_json(folder / "metrics.json")
        if metrics is not None:
            runs.append(Run(folder, metrics, curve))
        elif curve and (folder / ".hydra" / "config.yaml").is_file():
            runs.append(Run(folder, _unfinished_metrics(folder, curve), curve))
    _add_preset_diffs(runs)
    for run in runs:
        run.seed = _seed(run)
    return runs


def _seed(run: Run) -> int | str | None:
    """The run's seed, only for display: an override is kept as written, so a hand-edited record cannot
    stop the report."""
    config = run.path / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        return OmegaConf.load(config).get("seed")
    given = [o.partition("=")[2] for o in run.metrics.get("overrides") or [] if o.partition("=")[0] == "seed"]
    return given[-1] if given else None


# Keys that say where a run reads and writes, what it logs or when it saves and stops (callbacks), not
# what it trains. A stage-2 run's init_from is a path; the table's stage column says what it trains.
_NOT_TRAINING = ("paths.", "resume", "ckpt_path", "init_from", "objective", "data.data_dir", "data.download", "data.url", "data.sha256",
                 "callbacks.", "trainer.plugins", "logger.")
# Groups whose choice is a setting of the run (lr_schedule=plateau), shown in its settings, not part of its preset.
_SETTING_GROUPS = ("alpha_schedule", "tau_schedule", "lr_schedule")


def _add_preset_diffs(runs: list[Run]) -> None:
    """Set each run's preset_diff: a preset can change after a run (the small dropout did), and then the
    run's command-line overrides no longer say how it differs from a run started today."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for run in runs:
            run.preset_diff = _preset_diff(run.path, compose)


def _preset_diff(folder: Path, compose) -> tuple[str, ...] | None:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config, overrides = folder / ".hydra" / "config.yaml", folder / ".hydra" / "overrides.yaml"
    if not (config.is_file() and overrides.is_file()):
        return None
    # The run's choices of config groups (experiment=small_re, model=tied, ...) make its preset; a choice
    # of a setting group that changes the preset's (lr_schedule=plateau) is one of its settings.
    groups = [o for o in OmegaConf.load(overrides) if (CONF / o.partition("=")[0].lstrip("+")).is_dir()]
    chosen = [o for o in groups if o.partition("=")[0].lstrip("+") in _SETTING_GROUPS]
    try:
        today = _flat(OmegaConf.to_container(compose(config_name="train", overrides=groups), resolve=False))
        preset = today if not chosen else _flat(OmegaConf.to_container(
            compose(config_name="train", overrides=[o for o in groups if o not in chosen]), resolve=False))
    except (HydraException, OmegaConfBaseException):  # e.g. a preset renamed since the run
        return None
    ran = _flat(OmegaConf.to_container(OmegaConf.load(config), resolve=False))
    absent = object()
    settings = {
        f"{key}={_show(ran[key]) if key in ran else '(absent)'}"
        for key in ran.keys() | today.keys()
        if not key.startswith(_NOT_TRAINING) and ran.get(key, absent) != today.get(key, absent)
    }
    for choice in chosen:
        prefix = choice.partition("=")[0].lstrip("+") + "."
        if any(today.get(k) != preset.get(k) for k in today.keys() | preset.keys() if k.startswith(prefix)):
            settings.add(choice.lstrip("+"))
    return tuple(sorted(settings))


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.removesuffix("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def _show(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def _unfinished_metrics(folder: Path, curve: list[tuple[int, float]]) -> dict:
    """What a run still training (or stopped, to be resumed) has so far, from its Hydra config and log."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    hydra_yaml = folder / ".hydra" / "hydra.yaml"  # Hydra writes it beside config.yaml; without it, variant "?"
    choices = OmegaConf.load(hydra_yaml).hydra.runtime.choices if hydra_yaml.is_file() else {}
    overrides_yaml = folder / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_yaml)) if overrides_yaml.is_file() else []
    return {
        "val/ppl": min(p for _, p in curve), "test/ppl": None, "epochs": len(curve), "params": None,
        "model": choices.get("model"), "size": choices.get("size"), "loss": choices.get("loss"),
        "alpha": cfg.loss.get("alpha"), "tau": cfg.loss.get("tau"), "wall_s": None,
        "max_epochs": cfg.trainer.get("max_epochs"), "init_from": cfg.get("init_from"), "overrides": overrides,
        "unfinished": True,
    }


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _read_json(path: Path) -> dict | None:
    """metrics.json, or None if there is none or it is not whole (a run that was killed while writing it
    elsewhere, or a copy cut short); the folder then counts as unfinished."""
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _warn(f"{path} is not whole JSON ({exc}); reading the run as unfinished")
        return None
    return metrics if isinstance(metrics, dict) else None


def _val_curve(path: Path) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    by_epoch = {}
    with path.open() as f:
        # A resumed run appends to the same file; an epoch validated twice keeps its latest value.
        for line, row in enumerate(csv.DictReader(f), start=2):
            if not row.get("val/ppl"):
                continue
            try:
                by_epoch[int(row["epoch"])] = float(row["val/ppl"])
            except (TypeError, ValueError):  # a row cut short by a kill, or a damaged copy
                _warn(f"{path}, line {line}: not a whole row of numbers; skipped")
    return sorted(by_epoch.items())


def format_number(x, digits=1) -> str:
    """x with thousands separators and `digits` decimals; "-" for a missing value."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _table_order(r: Run) -> tuple:
    return r.size, ORDER.index(r.variant) if r.variant in ORDER else 9, r.stage, str(r.path)


def markdown_table(runs: list[Run]) -> str:
    runs = sorted(runs, key=_table_order)
    lines = [
        "| variant | size | stage | alpha | params | epochs | best val/ppl | test/ppl | paper test | difference | "
        "wall (h) | settings | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        m = r.metrics
        paper = PAPER_PTB.get((r.size, r.variant), (None, None))[1]
        diff = m["test/ppl"] - paper if paper is not None and m.get("test/ppl") is not None else None
        epochs = m.get("epochs") if r.finished else f"{m.get('epochs')} of {m.get('max_epochs')} (unfinished)"
        wall = m.get("wall_s")
        settings = " ".join(f"`{o}`" for o in _settings(r)) or "-"
        lines.append(
            f"| {r.variant} | {r.size} | {r.stage} | {'-' if r.alpha is None else r.alpha} | "
            f"{format_number(m.get('params'), 0)} | {epochs} | {format_number(m.get('val/ppl'))} | {format_number(m.get('test/ppl'))} | "
            f"{format_number(paper)} | {'-' if diff is None else f'{diff:+.1f}'} | {format_number(None if wall is None else wall / 3600, 2)} | "
            f"{settings} | `{r.path}` |"
        )
    return "\n".join(lines) + "\n"


def repeat_groups(runs: list[Run]) -> list[list[Run]]:
    """Finished runs that differ in nothing but their seed (same size, variant, alpha and settings), in
    groups of two or more: how far such runs spread says which differences in the table are noise. A
    rerun with the same seed belongs too: it differs from the first in float rounding alone."""
    groups = defaultdict(list)
    for r in runs:
        if r.tested:
            groups[(r.size, r.variant, r.stage, r.alpha, _settings(r, ("seed",)))].append(r)
    return [group for group in groups.values() if len(group) >= 2]


def repeats_table(runs: list[Run]) -> str:
    """Mean and range of best val/ppl and test/ppl over each group of repeat_groups; "" if there is none."""
    groups = sorted(repeat_groups(runs), key=lambda group: _table_order(group[0]))
    if not groups:
        return ""
    lines = [
        "| variant | size | stage | alpha | settings (apart from the seed) | seeds | best val/ppl: mean (min to max) | "
        "test/ppl: mean (min to max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        first = group[0]
        cells = []
        for key in ("val/ppl", "test/ppl"):
            values = [r.metrics[key] for r in group]
            cells.append(f"{format_number(sum(values) / len(values), 2)} ({format_number(min(values), 2)} to {format_number(max(values), 2)})")
        settings = " ".join(f"`{o}`" for o in _settings(first, ("seed",))) or "-"
        alpha = "-" if first.alpha is None else first.alpha
        seeds = ", ".join("default" if r.seed is None else str(r.seed) for r in group)  # a seed twice: a rerun
        lines.append(f"| {first.variant} | {first.size} | {first.stage} | {alpha} | {settings} | {seeds} | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib  # the [report] extra; imported here so that the table needs no matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def val_series(runs: list[Run]) -> dict[str, list[tuple[int, float]]]:
    """label -> [(epoch counted from 1, val/ppl)] for each run that has validated; what both plots draw."""
    return {f"{r.label} ({r.path.name})": [(e + 1, p) for e, p in r.val_curve] for r in runs if r.val_curve}


def plot_val_curves(runs: list[Run], out: Path) -> Path | None:
    curves = val_series(runs)
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        ax.plot([e for e, _ in points], [p for _, p in points], marker="o", markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel="validation perplexity", title="Validation perplexity per epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# Overrides that do not change what a run trains (resume) or that (size, variant) already says.
_NOT_SETTINGS = ("resume", "init_from", "experiment", "model", "loss", "size")


def _settings(run: Run, ignore: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What sets the run apart from its preset as composed today (else, for a folder without its Hydra
    config, its command-line overrides that change what it trains), less keys starting with `ignore`."""
    if run.preset_diff is not None:
        return tuple(s for s in run.preset_diff if not s.startswith(ignore))
    kept = []
    for override in run.metrics.get("overrides") or []:
        key, _, value = override.partition("=")
        name = key.lstrip("+~")
        if name not in _NOT_SETTINGS and not name.startswith(("hydra.", *ignore)):
            # x=True and x=true are one setting; other values (paths) keep their case
            kept.append(f"{key}={value.lower()}" if value.lower() in ("true", "false") else override)
    return tuple(sorted(kept))


def alpha_points(runs: list[Run]) -> dict[str, list[tuple[float, Run]]]:
    """label -> [(alpha, run)] sorted by alpha, for AL or REAL runs finished at 2+ alphas that differ in
    nothing else (same size, variant and other overrides).

    A cross-entropy run of the same size and classifier (VD for AL, RE for REAL), with the same
    overrides apart from the loss and alpha schedule, that ran as many epochs is the point alpha = 0:
    the augmented loss with alpha 0 is cross-entropy.
    """
    finished = [r for r in runs if r.tested]
    groups = defaultdict(list)
    for r in finished:
        if r.alpha is not None:
            groups[(r.size, r.variant, r.stage, _settings(r, ("loss.alpha",)))].append((float(r.alpha), r))
    groups = {k: v for k, v in groups.items() if len({a for a, _ in v}) >= 2}
    with_ce = {"VD": "AL", "RE": "REAL"}
    for (size, variant, stage, _), points in groups.items():
        alpha_free = _settings(points[0][1], ("loss.", "alpha_schedule.", "tau_schedule."))
        for r in finished:
            if ((r.size, with_ce.get(r.variant), r.stage) == (size, variant, stage) and _settings(r) == alpha_free
                    and {a.metrics["epochs"] for _, a in points} == {r.metrics["epochs"]}):
                points.append((0.0, r))
    labels = defaultdict(int)
    for size, variant, stage, _ in groups:
        labels[(size, variant, stage)] += 1
    return {(f"{size} {variant}" + (" stage 2" if stage == 2 else "")
             + (f" [{' '.join(settings)}]" if labels[(size, variant, stage)] > 1 else "")):
            sorted(points, key=lambda point: point[0]) for (size, variant, stage, settings), points in groups.items()}


def alpha_series(runs: list[Run]) -> dict[str, list[tuple[float, float]]]:
    """"<group> val/ppl" and "<group> test/ppl" -> [(alpha, perplexity)] (see alpha_points); what both plots draw."""
    return {f"{label} {split}/ppl": [(a, r.metrics[f"{split}/ppl"]) for a, r in points]
            for label, points in alpha_points(runs).items() for split in ("val", "test")}


def plot_alpha_sweep(runs: list[Run], out: Path) -> Path | None:
    """val/test perplexity against alpha."""
    series = alpha_series(runs)
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        ax.plot([a for a, _ in points], [p for _, p in points], "s--" if label.endswith("test/ppl") else "o-",
                label=label)
    ax.set(xlabel="alpha (0: cross-entropy)", ylabel="perplexity", title="Perplexity against alpha")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# A table in a document that report.py keeps equal to the records it names:
#   <!-- report: results/paper_small -->  ...the table...  <!-- /report -->
REPORT_BLOCK = re.compile(r"(<!-- report: (?P<paths>[^>]*?) -->\n)(?P<table>.*?)(<!-- /report -->)", re.S)


def report_tables(runs: list[Run]) -> str:
    """The table of ``runs`` and, below it, the spread of those whose settings differ at most in the seed."""
    table = markdown_table(runs)
    repeats = repeats_table(runs)
    return table + ("\nRuns with the same settings apart from the seed, together:\n\n" + repeats if repeats else "")


def render_report_blocks(text: str) -> str:
    """``text`` with every report block's table regenerated from the records it names (paths relative
    to the working directory, as written in the block)."""
    return REPORT_BLOCK.sub(lambda m: m.group(1) + report_tables(find_runs(m.group("paths").split())) + m.group(4), text)


# A figure in a document, drawn from the records it names, with its data in a CSV beside the PNG:
#   <!-- figure: docs/figures/NAME.png results/... results/... -->  ![...](...)  <!-- /figure -->
FIGURE_BLOCK = re.compile(r"(?P<open><!-- figure: (?P<png>\S+) (?P<paths>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /figure -->)",
                          re.S)


def val_curves_csv(runs: list[Run]) -> str:
    """What a validation-curve figure draws: one line per (series, epoch, val/ppl)."""
    lines = ["series,epoch,val_ppl"]
    lines += [f"{label},{epoch},{ppl:.4f}" for label, points in val_series(runs).items() for epoch, ppl in points]
    return "\n".join(lines) + "\n"


def render_figure_blocks(text: str, doc: Path, draw: bool = True) -> str:
    """``text`` with every figure block's image link regenerated; with ``draw``, also the PNG (matplotlib)
    and its CSV, from the records the block names (paths relative to the working directory)."""
    def figure(m: re.Match) -> str:
        png = Path(m.group("png"))
        runs = find_runs(m.group("paths").split())
        if draw:
            png.parent.mkdir(parents=True, exist_ok=True)
            png.with_suffix(".csv").write_text(val_curves_csv(runs))
            plot_val_curves(runs, png)
        link = os.path.relpath(png, doc.parent)  # both made absolute against the working directory
        image = f"![Validation perplexity per epoch; data: {png.with_suffix('.csv').name}]({link})\n"
        return m.group("open") + image + m.group("close")

    return FIGURE_BLOCK.sub(figure, text)
