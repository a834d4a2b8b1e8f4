"""Training throughput, measured over whole training epochs (validation excluded)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


class TrainThroughput(pl.Callback):
    """Tokens per second of the training loop: data, forward, loss, backward, clipping, update, logging.

    Timed from the start of each training epoch to the first of (validation start, epoch end), with
    one device synchronisation there, so nothing is added to the step itself.
    """

    def __init__(self):
        self.tokens = 0
        self.seconds = 0.0
        self._epoch_tokens = 0
        self._t0: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_tokens = 0
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_tokens += batch[1].numel()

    def _stop(self, pl_module) -> None:
        if self._t0 is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - self._t0
        self.tokens += self._epoch_tokens
        self._t0 = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(pl_module)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = state_dict["tokens"]
        self.seconds = state_dict["seconds"]
