"""Exact resume: what a checkpoint carries beyond Lightning's own state (weights, optimizer, loops, schedules)
so that a run stopped anywhere, mid-epoch included, continues as if it had never stopped."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def rng_state(device: torch.device) -> dict:
    """This process's dropout RNG: the CPU generator and, on a GPU, the generator of its own device."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].clone())  # clone: a view's storage offset would be ignored
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].clone(), device)


def seed_rank(seed: int, rank: int) -> None:
    """Seed this process's dropout masks by rank (the data order does not depend on it): with one seed
    on every rank, stream j and stream j + B/N of a DDP run would draw identical masks."""
    torch.manual_seed(seed + 1_000_003 * rank)  # also seeds every CUDA device


class ExactResume(pl.Callback):
    """Saves and restores the training state that lives outside Lightning: every rank's RNG state (the
    dropout masks), the LSTM state carried from window to window with the number of windows done in the
    epoch, and the loss's own carried state (``loss.carried_state()``: the target snapshot of
    ``loss.target_refresh``). The task adds it to every trainer (``LanguageModelTask.configure_callbacks``).

    Resumed on another number of processes, the masks are drawn afresh, still distinct per rank.
    """

    def __init__(self):
        self.trainer: pl.Trainer | None = None
        self._loaded: dict | None = None  # from load_state_dict, applied in on_train_start

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        task = self.trainer.lightning_module
        hidden = task.hidden["train"]
        return {
            "rng": self._all_rng_states(task.device),
            "hidden": None if hidden is None else [(h.cpu(), c.cpu()) for h, c in hidden],
            "windows_done": task.windows_done,
            "loss": {k: v.cpu() for k, v in task.loss.carried_state().items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def _all_rng_states(self, device: torch.device) -> list[dict]:
        """Every rank's RNG state, in rank order (every rank saves a checkpoint at the same step)."""
        mine = rng_state(device)
        trainer = self.trainer
        if trainer.world_size == 1:
            return [mine]
        gathered = {key: trainer.strategy.all_gather(value.to(device)).cpu() for key, value in mine.items()}
        return [{key: value[r] for key, value in gathered.items()} for r in range(trainer.world_size)]

    def on_train_start(self, trainer, task) -> None:
        loaded, self._loaded = self._loaded, None
        rank, world = trainer.global_rank, trainer.world_size
        if loaded is None:
            if world > 1:
                seed_rank(torch.initial_seed(), rank)
            return
        if len(loaded["rng"]) == world:
            set_rng_state(loaded["rng"][rank], task.device)
        else:
            log.warning("the checkpoint holds the RNG state of %d processes and this run has %d: dropout masks "
                        "are drawn afresh, so the run is equivalent to, not identical with, an unbroken one",
                        len(loaded["rng"]), world)
            seed_rank(torch.initial_seed() + trainer.global_step, rank)
        task.loss.load_carried_state({k: v.to(task.device) for k, v in loaded["loss"].items()})
        done = loaded["windows_done"]
        if 0 < done < trainer.num_training_batches:  # stopped mid-epoch: continue at the next window
            task.windows_done = done
            task.hidden["train"] = [(h.to(task.device), c.to(task.device)) for h, c in loaded["hidden"]]
            trainer.train_dataloader.start_at(done)
            bar = trainer.progress_bar_callback
            if bar is not None:  # Lightning skips the epoch-start hooks here, so the bar lacks its total
                bar.on_train_epoch_start(trainer, task)
