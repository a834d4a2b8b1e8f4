"""Train a language model, test its best checkpoint, and write metrics.json in the run directory.

    python scripts/train.py model=tied loss=augmented
    python scripts/train.py -m loss.alpha=0.1,0.5,1.0
    python scripts/train.py [same overrides] hydra.run.dir=logs/runs/<run> resume=true   # continue a run
    python scripts/train.py [same overrides] init_from=<run>/checkpoints/last.ckpt      # a second training run
    python scripts/train.py -m hparams_search=small_real_alpha_tau                      # an Optuna study

Returns the run's ``objective`` (val/ppl by default) for a Hydra sweeper. In a multirun, a point whose
training loss became non-finite prints its error line and returns an infinite perplexity, the worst value
a study can record, and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lm.allocator import keep_freed_memory
from lm.build import build_datamodule, build_task, build_trainer, close_distributed
from lm.callbacks import NonFiniteLoss, StopRequested, TrainThroughput
from lm.checkpoint import check_compatible, load_checkpoint, model_state
from lm.cli import report_user_errors
from lm.errors import ConfigError
from lm.files import atomic_write

log = logging.getLogger(__name__)
OBJECTIVES = ("val/ppl", "test/ppl")  # what `objective` may name: the perplexities of metrics.json


def _float(x) -> float:
    return float(x) if x is not None else math.nan


def _resume_from(cfg: DictConfig, run_dir: Path) -> Path | None:
    if cfg.ckpt_path:
        return Path(cfg.ckpt_path)
    if cfg.resume:
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return last
        log.info("resume=true but %s does not exist yet: starting from scratch", last)
    return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float:
    start = time.time()
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {cfg.objective!r}.")
    keep_freed_memory()  # CPU: the per-step (tokens x vocab) tensors stay in the process (lm/allocator.py)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    resume = _resume_from(cfg, run_dir)
    init_from = cfg.get("init_from") if resume is None else None  # a resumed stage-2 run has its own weights
    task = build_task(cfg, datamodule.vocab, from_checkpoint=resume is not None or init_from is not None)
    trainer = build_trainer(cfg)
    if resume is not None:  # fail here, in one line, rather than inside Lightning
        check_compatible(load_checkpoint(resume), resume, task.model, datamodule.vocab.itos)
        log.info("resuming from %s", resume)
    elif init_from is not None:  # weights only: optimizer, schedules and epochs start afresh
        source = load_checkpoint(init_from)
        check_compatible(source, init_from, task.model, datamodule.vocab.itos)
        task.model.load_state_dict(model_state(source))
        log.info("starting from the weights of %s", init_from)
    if trainer.is_global_zero:
        datamodule.vocab.save(run_dir / "vocab.txt")

    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    except (SIGTERMException, StopRequested) as exc:
        reason = "SIGTERM" if isinstance(exc, SIGTERMException) else str(exc)
        print(
            f"stopped by {reason} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"continue with the same command plus hydra.run.dir={run_dir} resume=true",
            file=sys.stderr,
        )
        sys.exit(143 if isinstance(exc, SIGTERMException) else 130)
    except NonFiniteLoss as exc:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        print(f"error: {exc}", file=sys.stderr)  # one point of a sweep: the others still run
        return math.inf

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    # Without a checkpoint (fast_dev_run), the last validation stands in for the best one.
    val_ppl = checkpoint.best_model_score if best else trainer.callback_metrics.get("val/ppl")
    throughput = next((c for c in trainer.callbacks if isinstance(c, TrainThroughput)), None)
    # Read before testing: trainer.test(ckpt_path=best) loads the callbacks' state from best.ckpt too.
    tokens_per_s = throughput.tokens_per_s if throughput else math.nan
    earlier_wall_s = throughput.earlier_wall_s if throughput else 0.0
    test = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)

    metrics = {
        "val/ppl": _float(val_ppl),
        "test/ppl": _float(test[0].get("test/ppl") if test else None),
        "epochs": trainer.current_epoch,
        "params": task.model.num_parameters(),
        "train_tokens_per_s": tokens_per_s,
        "model": HydraConfig.get().runtime.choices.get("model"),
        "size": HydraConfig.get().runtime.choices.get("size"),
        "loss": HydraConfig.get().runtime.choices.get("loss"),
        "alpha": cfg.loss.get("alpha"),
        "tau": cfg.loss.get("tau"),
        "init_from": cfg.get("init_from"),
        "best_checkpoint": best,
        # Across resumes: the time recorded in the checkpoint, plus this process's.
        "wall_s": round(earlier_wall_s + time.time() - start, 1),
        "overrides": list(HydraConfig.get().overrides.task),
    }
    if trainer.is_global_zero:
        with atomic_write(run_dir / "metrics.json", "w") as f:  # report.py may read it at any moment
            f.write(json.dumps(metrics, indent=2) + "\n")
        print(
            f"{metrics['model']}/{metrics['loss']}/{metrics['size']} alpha={metrics['alpha']}: "
            f"val/ppl {metrics['val/ppl']:.2f}  test/ppl {metrics['test/ppl']:.2f}  "
            f"epochs {metrics['epochs']}  params {metrics['params']:,}  "
            f"{metrics['train_tokens_per_s']:.0f} train tokens/s  -> {run_dir}"
        )
    close_distributed()
    return metrics[cfg.objective]


if __name__ == "__main__":
    main()
