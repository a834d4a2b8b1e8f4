"""Train a language model, test its best checkpoint, and write metrics.json in the run directory.

    python scripts/train.py model=tied loss=augmented
    python scripts/train.py -m loss.alpha=0.1,0.5,1.0
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lm.build import build_datamodule, build_task, build_trainer
from lm.callbacks import TrainThroughput
from lm.cli import report_user_errors


def _float(x) -> float:
    return float(x) if x is not None else math.nan


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float:
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        datamodule.vocab.save(run_dir / "vocab.txt")

    trainer.fit(task, datamodule=datamodule)

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    # Without a checkpoint (fast_dev_run), the last validation stands in for the best one.
    val_ppl = checkpoint.best_model_score if best else trainer.callback_metrics.get("val/ppl")
    test = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    throughput = next((c for c in trainer.callbacks if isinstance(c, TrainThroughput)), None)

    metrics = {
        "val/ppl": _float(val_ppl),
        "test/ppl": _float(test[0].get("test/ppl") if test else None),
        "epochs": trainer.current_epoch,
        "params": task.model.num_parameters(),
        "train_tokens_per_s": throughput.tokens_per_s if throughput else math.nan,
        "model": HydraConfig.get().runtime.choices.get("model"),
        "size": HydraConfig.get().runtime.choices.get("size"),
        "loss": HydraConfig.get().runtime.choices.get("loss"),
        "alpha": cfg.loss.get("alpha"),
        "tau": cfg.loss.get("tau"),
        "best_checkpoint": best,
        "wall_s": round(time.time() - start, 1),
        "overrides": list(HydraConfig.get().overrides.task),
    }
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(
            f"{metrics['model']}/{metrics['loss']}/{metrics['size']} alpha={metrics['alpha']}: "
            f"val/ppl {metrics['val/ppl']:.2f}  test/ppl {metrics['test/ppl']:.2f}  "
            f"epochs {metrics['epochs']}  params {metrics['params']:,}  "
            f"{metrics['train_tokens_per_s']:.0f} train tokens/s  -> {run_dir}"
        )
    return metrics["val/ppl"]


if __name__ == "__main__":
    main()
