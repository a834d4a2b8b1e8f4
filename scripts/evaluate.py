"""Validation and test perplexity of a checkpoint, as JSON on the last line of output.

    python scripts/evaluate.py ckpt_path=logs/runs/.../checkpoints/best.ckpt [data.* / trainer.* overrides]

The model is rebuilt as the checkpoint says it was trained (tied or not, its sizes and dropout); the data
and trainer settings come from the command line.
"""

from __future__ import annotations

import json

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lm.allocator import keep_freed_memory
from lm.build import build_datamodule, build_task, build_trainer, close_distributed
from lm.checkpoint import adopt_model_config, check_compatible, load_checkpoint, model_state
from lm.cli import report_user_errors
from lm.errors import ConfigError


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> None:
    if not cfg.ckpt_path:
        raise ConfigError("evaluate.py needs ckpt_path=PATH (a .ckpt file written by train.py).")
    keep_freed_memory()
    checkpoint = load_checkpoint(cfg.ckpt_path)
    adopt_model_config(cfg, checkpoint, cfg.ckpt_path, list(HydraConfig.get().overrides.task))
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule.vocab, from_checkpoint=True)
    check_compatible(checkpoint, cfg.ckpt_path, task.model, datamodule.vocab.itos)
    # The weights from the checkpoint read above: ckpt_path= in validate and test would read the file twice
    # more and restore the training state (optimizer, callbacks), which an evaluation does not use.
    task.model.load_state_dict(model_state(checkpoint))
    trainer = build_trainer(cfg, with_callbacks=False, with_logger=False)
    val = trainer.validate(task, datamodule=datamodule, verbose=False)
    test = trainer.test(task, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        print(json.dumps({"ckpt_path": str(cfg.ckpt_path), "val/ppl": val[0]["val/ppl"], "test/ppl": test[0]["test/ppl"]}))
    close_distributed()


if __name__ == "__main__":
    main()
