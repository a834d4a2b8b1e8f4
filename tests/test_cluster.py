"""Cluster sweeps through hydra-submitit-launcher (the [slurm] extra): the config, and a real local sweep."""

import json

import pytest

from helpers import TINY, compose_cfg, run_script

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the [slurm] extra")


def test_slurm_config_gives_one_task_per_device_and_resumes(tmp_path):
    cfg = compose_cfg(["cluster=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path,
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.max_num_timeout > 0 and cfg.resume is True


@pytest.mark.slow
def test_submitit_sweep_runs_one_job_per_point(corpus, tmp_path):
    """The same plugin path as SLURM, with submitit's local executor: one job (process) per alpha."""
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                        "loss.alpha=0.2,0.8", *TINY, f"data.data_dir={corpus}", "trainer.max_epochs=1",
                        "trainer.limit_train_batches=5", f"hydra.sweep.dir={sweep}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(r["alpha"] for r in records) == [0.2, 0.8]
