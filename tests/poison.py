"""A callback for tests run through the real scripts: makes one rank's loss non-finite at one step."""

import pytorch_lightning as pl
import torch


class PoisonRank(pl.Callback):
    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.decoder.weight.fill_(float("nan"))  # this rank's copy only
