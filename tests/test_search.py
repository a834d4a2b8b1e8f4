"""Hyper-parameter search: train.py's return value for a sweeper, and Hydra's Optuna sweeper (the [search] extra)."""

import json

import pytest

from helpers import TINY, compose_cfg, run_script


def _trial_args(corpus, sweep):
    return [*TINY, f"data.data_dir={corpus}", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2", f"hydra.sweep.dir={sweep}"]


@pytest.mark.slow
def test_a_diverging_sweep_point_fails_alone_and_the_sweep_goes_on(corpus, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "optim.optimizer.lr=1e30,1.0", *_trial_args(corpus, sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error: training loss is" in result.stderr  # the diverged point says why
    assert not (sweep / "0" / "metrics.json").exists()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["val/ppl"] > 1


def test_objective_names_a_perplexity(corpus, tmp_path):
    result = run_script("train.py", "objective=val/los", *TINY, f"data.data_dir={corpus}",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: objective must be one of val/ppl, test/ppl, got 'val/los'.")


def test_study_configs_search_alpha_tau_and_dropout_with_a_seeded_tpe_sampler(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the [search] extra")
    for name, keys in (("small_real_alpha_tau", ["loss.alpha", "loss.tau"]),
                       ("small_real_dropout", ["model.dropout_state"])):
        cfg = compose_cfg([f"hparams_search={name}"], tmp_path, return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert "optuna" in sweeper._target_.lower() and sweeper.sampler._target_.endswith("TPESampler")
        assert list(sweeper.params) == keys and sweeper.sampler.seed == 1234 and sweeper.direction == "minimize"
        assert cfg.objective == "val/ppl"


@pytest.mark.slow
def test_a_two_trial_study_runs_through_train_py_and_report_py_tables_it(corpus, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the [search] extra")
    sweep = tmp_path / "study"
    result = run_script("train.py", "-m", "hparams_search=small_real_alpha_tau", "hydra.sweeper.n_trials=2",
                        "model.dropout_state=interval(0.1,0.5)", *_trial_args(corpus, sweep))  # a range added
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 2 and records[0]["alpha"] != records[1]["alpha"]
    assert all(0.3 <= r["alpha"] <= 1.0 and 1.0 <= r["tau"] <= 40.0 for r in records)
    best = min(r["val/ppl"] for r in records)
    assert (sweep / "optimization_results.yaml").is_file()

    out = tmp_path / "report"
    result = run_script("report.py", str(sweep), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / f"study_{sweep.name}.md").read_text()
    assert "| trial | `loss.alpha` | `loss.tau` | `model.dropout_state` | val/ppl |" in table
    assert table.count(" (best) |") == 1 and f"{best:.2f} (best)" in table
    pytest.importorskip("matplotlib")
    assert (out / f"study_{sweep.name}.png").stat().st_size > 1000


def test_a_study_runs_one_trial_per_slurm_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the [search] extra")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the [slurm] extra")
    cfg = compose_cfg(["hparams_search=small_real_alpha_tau", "cluster=slurm"], tmp_path, return_hydra_config=True)
    assert "optuna" in cfg.hydra.sweeper._target_.lower()
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
