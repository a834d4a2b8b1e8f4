"""scripts/report.py and scripts/reproduce.py: the table from run folders, next to the paper's numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, TINY, compose_cfg, run_script


def _fake_run(folder, model, loss, test_ppl, alpha=None, curve=(300.0, 200.0), overrides=()):
    folder.mkdir(parents=True)
    metrics = {"val/ppl": min(curve), "test/ppl": test_ppl, "epochs": len(curve), "params": 1234, "model": model,
               "size": "small", "loss": loss, "alpha": alpha, "wall_s": 7200.0, "overrides": list(overrides)}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "csv").mkdir()
    rows = ["epoch,step,train/loss,val/ppl"] + [f"{e},{10 * e + 9},,{p}" for e, p in enumerate(curve)]
    rows.insert(1, "0,4,5.0,")  # a training row without val/ppl
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_report_table_compares_with_the_paper_and_plots(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "real", "tied", "augmented", 80.7, alpha=0.5)
    _fake_run(runs / "vd", "untied", "ce", 90.3)
    _fake_run(runs / "sweep" / "0", "tied", "augmented", 84.0, alpha=0.1)
    _fake_run(runs / "vd_plateau", "untied", "ce", 92.0,
              overrides=("experiment=small_vd", "lr_schedule=plateau", "resume=True", "hydra.run.dir=x"))
    result = run_script("report.py", str(runs), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "report" / "table.md").read_text().splitlines()
    assert len(table) == 2 + 4
    vd = next(line for line in table if line.startswith("| VD |") and "plateau" not in line)
    real = next(line for line in table if "| REAL | small | 1 | 0.5 |" in line)
    assert "| 90.3 | 87.3 | +3.0 | 2.00 | - |" in vd  # the paper's small VD-LSTM: 87.3 test; no overrides
    assert "| 80.7 | 82.7 | -2.0 |" in real
    plateau = next(line for line in table if "| 92.0 |" in line)
    assert "| `lr_schedule=plateau` | `" in plateau  # what it changed; not resume or its folder
    assert table.index(vd) < table.index(real)  # the paper's column order: VD, AL, RE, REAL
    pytest.importorskip("matplotlib")
    assert (tmp_path / "report" / "val_curves.png").stat().st_size > 1000
    assert (tmp_path / "report" / "alpha.png").stat().st_size > 1000  # two REAL runs, alphas 0.1 and 0.5


def _unfinished_run(folder, val_rows, max_epochs=40):
    """A run folder as train.py leaves it while training (or stopped): config and log, no metrics.json."""
    from omegaconf import OmegaConf

    overrides = ["experiment=small_real", "loss.alpha=0.5", f"trainer.max_epochs={max_epochs}", "data.data_dir=/Data/PTB"]
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(overrides, folder), folder / ".hydra" / "config.yaml")
    (folder / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      model: tied\n      size: small\n      loss: augmented\n")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    (folder / "csv").mkdir()
    rows = ["epoch,step,train/loss,val/ppl"] + [f"{e},{10 * e + 9},,{p}" for e, p in val_rows]
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_report_lists_an_unfinished_run_with_the_epochs_it_ran(tmp_path):
    runs = tmp_path / "runs"
    # Stopped after epoch 1 and resumed: the log repeats epoch 1, the latest value counts.
    _unfinished_run(runs / "real", [(0, 210.0), (1, 190.0), (1, 160.0), (2, 150.0)])
    _unfinished_run(runs / "just_started", [])  # nothing validated yet: not a row
    _unfinished_run(runs / "damaged", [(0, 300.0)])
    (runs / "damaged" / ".hydra" / "hydra.yaml").unlink()  # a row with variant "?", not a traceback
    _fake_run(runs / "vd", "untied", "ce", 90.3)
    result = run_script("report.py", str(runs), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "report" / "table.md").read_text().splitlines()
    assert len(table) == 2 + 3 and any(line.startswith("| ? | ? |") for line in table)
    real = next(line for line in table if line.startswith("| REAL |"))
    # Settings: loss.alpha is not the preset's; 40 epochs is, and the data folder does not change training.
    assert real.startswith("| REAL | small | 1 | 0.5 | - | 3 of 40 (unfinished) | 150.0 | - | 82.7 | - | - | "
                           "`loss.alpha=0.5` |")

    from lm.report import find_runs

    (run,) = [r for r in find_runs([runs]) if r.variant == "REAL"]
    assert run.val_curve == [(0, 210.0), (1, 160.0), (2, 150.0)] and not run.finished


def test_alpha_points_take_runs_that_differ_only_in_alpha_and_cross_entropy_as_alpha_zero(tmp_path):
    from lm.report import alpha_points, find_runs

    short = ("experiment=small_real", "trainer.max_epochs=2", "alpha_schedule.length=1")
    _fake_run(tmp_path / "real_0.5", "tied", "augmented", 84.0, alpha=0.5, overrides=(*short, "loss.alpha=0.5"))
    _fake_run(tmp_path / "real_0.1", "tied", "augmented", 86.0, alpha=0.1,
              overrides=(*short, "loss.alpha=0.1", "resume=True", "hydra.run.dir=x"))  # neither changes training
    _fake_run(tmp_path / "real_0.5_dropout", "tied", "augmented", 95.0, alpha=0.5,  # another setting: not a point
              overrides=(*short, "model.dropout_out=0.4"))
    _fake_run(tmp_path / "re", "tied", "ce", 88.0, overrides=("experiment=small_re", "trainer.max_epochs=2"))
    _fake_run(tmp_path / "re_longer", "tied", "ce", 80.0, curve=(300.0, 200.0, 150.0),  # another schedule
              overrides=("experiment=small_re", "trainer.max_epochs=3"))
    _fake_run(tmp_path / "re_no_overrides", "tied", "ce", 80.0)  # the defaults: another schedule
    _fake_run(tmp_path / "al", "untied", "augmented", 85.0, alpha=0.5)  # one alpha only: no line
    _fake_run(tmp_path / "vd", "untied", "ce", 90.0)
    _unfinished_run(tmp_path / "real_1.0", [(0, 300.0), (1, 200.0)], max_epochs=2)  # no test/ppl yet
    points = alpha_points(find_runs([tmp_path]))
    assert list(points) == ["small REAL"]
    assert [(a, r.path.name) for a, r in points["small REAL"]] == [(0.0, "re"), (0.1, "real_0.1"), (0.5, "real_0.5")]


def test_report_without_runs_says_where_it_looked(tmp_path):
    result = run_script("report.py", str(tmp_path))
    assert result.returncode == 2 and f"error: no run folders below {tmp_path}" in result.stderr


@pytest.mark.slow
def test_reproduce_trains_both_stages_of_each_small_variant_once_and_writes_the_table(corpus, tmp_path):
    args = ["small", "--out", str(tmp_path / "repro"), "--variants", "vd,real", *TINY, f"data.data_dir={corpus}",
            "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    first = run_script("reproduce.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "repro" / "small"
    for variant in ("vd", "real"):
        stage1 = root / variant / "stage1" / "checkpoints" / "last.ckpt"
        metrics = json.loads((root / variant / "stage2" / "metrics.json").read_text())
        assert metrics["init_from"] == str(stage1) and (root / variant / "stage1" / "metrics.json").is_file()
    table = (root / "report" / "table.md").read_text()
    alpha = compose_cfg(["experiment=small_real"], tmp_path).loss.alpha
    for row in ("| VD | small | 1 |", "| VD | small | 2 |", f"| REAL | small | 1 | {alpha} |", f"| REAL | small | 2 | {alpha} |"):
        assert row in table, row
    assert "init_from" not in table  # the stage column says it
    again = run_script("reproduce.py", *args)
    assert again.returncode == 0 and again.stdout.count("finished earlier") == 4


@pytest.mark.slow
def test_reproduce_runs_each_seed_in_its_own_folder_and_the_table_shows_their_spread(corpus, tmp_path):
    args = ["small", "--out", str(tmp_path / "repro"), "--variants", "vd", "--stages", "1", "--seeds", "1,2", *TINY,
            f"data.data_dir={corpus}", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    result = run_script("reproduce.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "repro" / "small"
    for seed in (1, 2):
        assert f"seed={seed}" in json.loads((root / "vd" / f"seed{seed}" / "stage1" / "metrics.json").read_text())["overrides"]
    table = (root / "report" / "table.md").read_text()
    assert "Runs with the same settings apart from the seed" in table and table.count("| VD | small | 1 |") == 3  # two runs, one spread
    assert "| 1, 2 |" in table  # the seeds, from each run's config


def _run_with_config(folder, overrides, edit=lambda cfg: None):
    """A finished run folder whose .hydra holds the config that `overrides` compose today, after `edit`."""
    from omegaconf import OmegaConf

    _fake_run(folder, "tied", "ce", 88.0, overrides=overrides)
    cfg = compose_cfg(list(overrides), folder)
    OmegaConf.set_struct(cfg, False)
    edit(cfg)
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), folder / ".hydra" / "overrides.yaml")


def test_settings_are_how_a_run_differs_from_its_preset_as_composed_today(tmp_path):
    from omegaconf import OmegaConf

    from lm.report import _settings, find_runs

    preset = compose_cfg(["experiment=small_re"], tmp_path)
    words = preset.model.dropout_words
    assert preset.model.dropout_emb != 0.45

    def since_then(cfg):  # the preset was changed after the run, and the run predates dropout_recurrent
        cfg.model.dropout_emb = 0.45
        del cfg.model["dropout_recurrent"]

    # An override equal to today's preset and one that only says where the data is: neither sets it apart.
    _run_with_config(tmp_path / "old", ["experiment=small_re", f"model.dropout_words={words}",
                                        "data.data_dir=/Data/PTB", "resume=true"], since_then)
    _run_with_config(tmp_path / "seed", ["experiment=small_re", "seed=7"])
    _run_with_config(tmp_path / "held", ["experiment=small_re", "lr_schedule=plateau", "lr_schedule.hold_epochs=20"])
    _run_with_config(tmp_path / "same_schedule", ["experiment=small_re", "lr_schedule=decay"])
    _run_with_config(tmp_path / "renamed", ["experiment=small_re", "model.dropout_out=0.4"])
    (tmp_path / "renamed" / ".hydra" / "overrides.yaml").write_text(
        OmegaConf.to_yaml(["experiment=no_such_preset", "model.dropout_out=0.4"]))
    runs = {r.path.name: r for r in find_runs([tmp_path])}
    assert _settings(runs["old"]) == ("model.dropout_emb=0.45", "model.dropout_recurrent=(absent)")
    assert _settings(runs["seed"]) == ("seed=7",)
    assert _settings(runs["held"]) == ("lr_schedule.hold_epochs=20", "lr_schedule=plateau")
    assert _settings(runs["same_schedule"]) == ()  # the preset's own choice
    # A preset that no longer composes: the command-line overrides, as before.
    assert _settings(runs["renamed"]) == ("model.dropout_out=0.4",)


def test_runs_that_differ_only_in_their_seed_are_summarised_together(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "re", "tied", "ce", 87.0, curve=(300.0, 91.0), overrides=("experiment=small_re",))
    _fake_run(runs / "re_seed2", "tied", "ce", 86.0, curve=(300.0, 92.0), overrides=("experiment=small_re", "seed=2"))
    _fake_run(runs / "re_seed3", "tied", "ce", 88.5, curve=(300.0, 90.0), overrides=("experiment=small_re", "seed=3"))
    _fake_run(runs / "re_d25", "tied", "ce", 80.0, overrides=("experiment=small_re", "seed=2", "model.dropout_out=0.25"))
    _fake_run(runs / "real", "tied", "augmented", 87.5, alpha=0.1, overrides=("experiment=small_real",))
    _fake_run(runs / "real_a03", "tied", "augmented", 87.2, alpha=0.3, overrides=("experiment=small_real",))  # not a repeat
    _unfinished_run(runs / "real_seed2", [(0, 300.0)])  # no test/ppl yet: not counted
    result = run_script("report.py", str(runs), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "report" / "table.md").read_text()
    repeats = table.split("Runs with the same settings apart from the seed")[1].splitlines()[4:]  # below its header
    # seeds from the overrides (these folders have no Hydra config); the first run kept the default
    assert repeats == ["| RE | small | 1 | - | - | default, 2, 3 | 91.00 (90.00 to 92.00) | 87.17 (86.00 to 88.50) |"]

    _fake_run(tmp_path / "alone" / "re", "tied", "ce", 87.0)
    result = run_script("report.py", str(tmp_path / "alone"), "--out", str(tmp_path / "report_alone"))
    assert "seed" not in (tmp_path / "report_alone" / "table.md").read_text()  # nothing to summarise


def test_report_skips_a_half_written_record_and_a_cut_row_with_a_warning(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "vd", "untied", "ce", 90.3, curve=(300.0, 200.0, 150.0))
    with (runs / "vd" / "csv" / "metrics.csv").open("a") as f:
        f.write("3,39,,1.2e")  # the last row, cut off by a kill in the middle of its number
    _fake_run(runs / "re", "tied", "ce", 88.0)
    metrics = runs / "re" / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])  # half a record, no .hydra config: nothing to read
    result = run_script("report.py", str(runs), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: {metrics} is not whole JSON" in result.stderr
    assert "metrics.csv, line 6: not a whole row of numbers; skipped" in result.stderr
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| VD | small |" in table and "| RE |" not in table


def test_committed_tables_are_what_report_py_makes_of_the_committed_records(monkeypatch):
    from helpers import REPO
    from lm.report import REPORT_BLOCK, render_report_blocks

    monkeypatch.chdir(REPO)  # the blocks name their records relative to the repository
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    blocks = 0
    for doc in docs:
        text = doc.read_text()
        blocks += len(REPORT_BLOCK.findall(text))
        assert render_report_blocks(text) == text, f"{doc.name}: run python scripts/report.py --sync {doc.relative_to(REPO)}"
    assert blocks >= 2  # the README's results block and the results document's


def test_committed_figures_draw_the_committed_records(monkeypatch):
    from helpers import REPO
    from lm.report import FIGURE_BLOCK, find_runs, render_figure_blocks, val_curves_csv

    monkeypatch.chdir(REPO)
    figures = 0
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in FIGURE_BLOCK.finditer(text):
            figures += 1
            png = REPO / m.group("png")
            assert png.is_file(), f"{png} is missing: run python scripts/report.py --sync {doc.relative_to(REPO)}"
            assert png.with_suffix(".csv").read_text() == val_curves_csv(find_runs(m.group("paths").split())), png
        assert render_figure_blocks(text, doc.relative_to(REPO), draw=False) == text, doc.name
    assert figures >= 2  # the README's figure and the results document's


def test_a_figure_block_draws_its_records_and_links_the_image_from_the_document(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lm.report import render_figure_blocks

    _fake_run(tmp_path / "results" / "vd", "untied", "ce", 100.0, curve=(150.0, 120.0, 110.0))
    monkeypatch.chdir(tmp_path)
    doc = Path("docs/results.md")
    text = "<!-- figure: docs/figures/v.png results/vd -->\nold\n<!-- /figure -->\n"
    out = render_figure_blocks(text, doc)
    assert "](figures/v.png)" in out and "old" not in out
    assert (tmp_path / "docs" / "figures" / "v.png").stat().st_size > 0
    assert (tmp_path / "docs" / "figures" / "v.csv").read_text().splitlines()[1:] == [
        "small VD (vd),1,150.0000", "small VD (vd),2,120.0000", "small VD (vd),3,110.0000"]
    assert "](docs/figures/v.png)" in render_figure_blocks(text, Path("README.md"), draw=False)


def test_sync_rewrites_a_stale_block_and_record_keeps_no_machine_path(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    runs = tmp_path / "machine" / "runs"
    _fake_run(runs / "vd", "untied", "ce", 90.3, overrides=("experiment=small_vd",))
    (runs / "vd" / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": {
        "runtime": {"choices": {"model": "untied", "loss": "ce", "size": "small"}},
        "overrides": {"task": ["experiment=small_vd"], "hydra": [f"hydra.run.dir={runs / 'vd'}", "hydra.mode=RUN"]},
    }}), runs / "vd" / ".hydra" / "hydra.yaml")
    OmegaConf.save(compose_cfg(["experiment=small_vd"], runs / "vd"), runs / "vd" / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["experiment=small_vd"]), runs / "vd" / ".hydra" / "overrides.yaml")
    monkeypatch.chdir(tmp_path)
    result = run_script("record.py", str(runs / "vd"), str(tmp_path / "results" / "set" / "vd"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = tmp_path / "results" / "set" / "vd"
    assert not list(record.rglob("*.ckpt"))
    for path in record.rglob("*"):
        assert not path.is_file() or str(tmp_path) not in path.read_text(), path
    assert (record / "command.txt").read_text() == "python scripts/train.py experiment=small_vd hydra.run.dir=<run>\n"
    told = run_script("record.py", str(runs / "vd"), str(tmp_path / "told"), "--env", "OMP_NUM_THREADS=1",
                      "--ran", "commit abc1234, alone")
    assert told.returncode == 0, told.stderr[-3000:]
    assert (tmp_path / "told" / "command.txt").read_text() == (
        "OMP_NUM_THREADS=1 python scripts/train.py experiment=small_vd hydra.run.dir=<run>\n# ran: commit abc1234, alone\n")

    doc = tmp_path / "doc.md"
    doc.write_text("# Results\n\n<!-- report: results/set -->\nan old table\n<!-- /report -->\nafter\n")
    synced = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--sync", str(doc)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr[-3000:]
    text = doc.read_text()
    assert "an old table" not in text and "| VD | small | 1 | - |" in text and "`results/set/vd`" in text
    assert text.endswith("<!-- /report -->\nafter\n")
