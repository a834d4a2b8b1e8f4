"""Callbacks: the paper's diagnostics, training throughput and run time, and saving ``last.ckpt`` when a run
is told to stop."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lm.analysis import pull_from_sums, pull_sums, subspace_distance, target_axis, target_spread
from lm.errors import ConfigError, UserError

log = logging.getLogger(__name__)


class PaperDiagnostics(pl.Callback):
    """After each validation, logs what the paper argues with.

    ``subspace_distance`` (untied models): how far the classifier W is from the span of the embedding L;
    Section 6.2 of the paper shows the augmented loss pulling it in. ``target/self``, ``target/near``,
    ``target/entropy`` (augmented loss): where y~ = softmax(L L[w] / tau) puts its mass at the tau in force,
    averaged over the validation words w. Mostly on w itself, the augmented term repeats cross-entropy; on
    w's nearest words, it credits them (the paper's aim); spread thin, it is label smoothing. ``target/axis``:
    the share of the variance of y~'s logits that the first principal axis of L decides (near 1: y~ ranks
    the vocabulary the same way for every w). ``pull/ratio`` and ``pull/cosine`` (augmented loss): how hard
    the augmented term at the alpha and tau in force pulls on the top LSTM layer's output against
    cross-entropy, over the tokens of every ``pull_every``-th validation window (``lm.analysis.pull_sums``,
    which costs about three of the window's float32 forward passes: four vocabulary-sized products; from
    the current L, also under ``loss.target_refresh``).
    """

    def __init__(self, pull_every: int = 10):
        if not isinstance(pull_every, int) or pull_every < 1:
            raise ConfigError("callbacks.diagnostics.pull_every must be a positive integer (windows), "
                              f"got {pull_every!r}.")
        self.pull_every = pull_every
        self._word_counts: torch.Tensor | None = None  # (V,) target words of this validation
        self._pull_sums: torch.Tensor | None = None  # (3,) lm.analysis.pull_sums over this validation

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._word_counts = None
        self._pull_sums = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not pl_module.augmented:
            return
        y = batch[1].reshape(-1)
        model = pl_module.model
        vocab = model.embedding.weight.size(0)
        # index_add, not bincount: bincount reads the largest id back to the host first.
        counts = torch.zeros(vocab, dtype=torch.long, device=y.device).index_add_(0, y, torch.ones_like(y))
        self._word_counts = counts if self._word_counts is None else self._word_counts + counts
        if batch_idx % self.pull_every:
            return
        loss = pl_module.loss
        sums = pull_sums(outputs, y, model.decoder.weight, loss.target_embedding(model.embedding.weight),
                         pl_module.current_alpha(), pl_module.current_tau(),
                         None if loss.pred_bias else model.decoder.bias)
        self._pull_sums = sums if self._pull_sums is None else self._pull_sums + sums

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        model = pl_module.model
        if not model.tie_weights:
            distance = subspace_distance(model.decoder.weight, model.embedding.weight)
            pl_module.log("subspace_distance", distance, on_epoch=True, sync_dist=False)
        if self._word_counts is not None:
            counts = trainer.strategy.reduce(self._word_counts, reduce_op="sum")  # DDP: every shard's words
            target_embedding = pl_module.loss.target_embedding(model.embedding.weight)  # what y~ is formed from
            spread = target_spread(target_embedding, counts, pl_module.current_tau())
            spread["axis"] = target_axis(target_embedding, counts)["logits"]  # the same at every tau
            for key, value in spread.items():
                pl_module.log(f"target/{key}", value, on_epoch=True, sync_dist=False)
            for key, value in pull_from_sums(trainer.strategy.reduce(self._pull_sums, reduce_op="sum")).items():
                pl_module.log(f"pull/{key}", value, on_epoch=True, sync_dist=False)


class TrainThroughput(pl.Callback):
    """Tokens per second of the training loop: data, forward, loss, backward, clipping, update, logging.

    Under DDP, the tokens of all processes together (each takes the same number of equal windows).

    Timed from the start of each training epoch to the first of (validation start, epoch end), with
    one device synchronisation there, so nothing is added to the step itself.

    Also keeps the run's wall time across resumes (``wall_s``): a checkpoint holds the time spent up
    to it, and a resumed process adds its own, so a run stopped and continued in several sessions
    reports its whole cost (time after the last checkpoint of a stopped process is redone, so not counted).

    Not Lightning's ``ThroughputMonitor``: it logs a rate over a moving window of recent steps, while the
    record needs the run's average over its training time alone; nor its ``Timer``, which counts the fit
    only, not the set-up and test pass that ``wall_s`` includes.
    """

    def __init__(self):
        self.tokens = 0
        self.seconds = 0.0
        self._epoch_tokens = 0
        self._t0: float | None = None
        self.earlier_wall_s = 0.0  # from the checkpoint this process resumed
        self._process_t0 = time.perf_counter()  # built with the trainer, at the start of the process

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_tokens = 0
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_tokens += batch[1].numel() * trainer.world_size

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

    @property
    def wall_s(self) -> float:
        return self.earlier_wall_s + time.perf_counter() - self._process_t0

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "wall_s": self.wall_s}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = state_dict["tokens"]
        self.seconds = state_dict["seconds"]
        self.earlier_wall_s = state_dict.get("wall_s", 0.0)  # absent in checkpoints written before it


def last_checkpoint_path(trainer) -> Path | None:
    """Where ``last.ckpt`` goes (conf/callbacks: beside ``best.ckpt``), which ``resume=true`` reads; None without
    checkpoints."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or checkpoint.dirpath is None:
        return None
    return Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the run stops without saving."""


class StopOnNonFiniteLoss(pl.Callback):
    """Stops a run whose training loss is NaN or infinite, before anything is saved, naming the step and
    the last checkpoint. On a GPU the previous step's loss is read (already computed, so the read does not
    wait for the current step); the pending one is read before a validation, which can write a checkpoint,
    and at the end. Under DDP every rank stops at the same step."""

    def __init__(self):
        self._step = 0
        self._unchecked: tuple[torch.Tensor, int, int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check(trainer, (outputs["loss"].detach(), self._step, batch_idx))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer, None)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, None)

    def _check(self, trainer, current: tuple[torch.Tensor, int, int] | None) -> None:
        pending, self._unchecked = self._unchecked, None
        if current is not None:
            if current[0].device.type == "cuda":
                self._unchecked = current
            else:
                pending = current
        if pending is None:
            return
        value, step, window = pending
        bad = (~torch.isfinite(value)).to(torch.float32)
        if trainer.world_size > 1:  # every rank stops at the same step, or the others would hang
            bad = trainer.strategy.reduce(bad.clone(), reduce_op="max")  # in the next collective
        if not bad.item():
            return
        where = "" if not torch.isfinite(value).item() or trainer.world_size == 1 else " on another process"
        last = last_checkpoint_path(trainer)
        last = last if last is not None and last.is_file() else None
        raise NonFiniteLoss(
            f"training loss is {'not finite' if where else value.item()}{where} at step {step} "
            f"(epoch {trainer.current_epoch}, window {window}); "
            f"stopped without saving, so checkpoints keep the last finite model"
            + (f": resume from {last}" if last else " (none was written yet)")
            + ". Lower the learning rate (optim.optimizer.lr) or clip harder (trainer.gradient_clip_val)."
        )


class StopRequested(Exception):
    """Ctrl-C during training: raised between two steps, after ``last.ckpt`` is written."""


class SaveOnStop(pl.Callback):
    """On SIGTERM (a scheduler's preemption notice) or a first Ctrl-C, finish the current step, write
    ``last.ckpt`` and stop, so that ``resume=true`` continues exactly where the run was.

    During training both signals are only noted; the run stops at the end of the step in progress
    (``SIGTERMException`` or ``StopRequested``), or, for a signal during validation, at the end of the
    next training step, so that the epoch's val/ppl, ``best.ckpt`` and plateau schedule miss nothing.
    Under DDP the processes agree every ``check_every`` steps (one all-reduce of a flag, which makes
    the host wait for the device, so not at every step), so all stop after the same step whichever of
    them got a signal. Lightning's own SIGTERM handler is replaced meanwhile:
    it broadcasts from inside the handler, once per signal, and rank 0 also forwards SIGTERM to the
    ranks it started, so a SIGTERM to all of them (``kill -TERM -<pgid>``) hangs the run, as does
    one to a rank other than 0. A second Ctrl-C stops at once, without saving.
    Other failures (a non-finite loss included) save nothing, so the last good checkpoint stays.
    """

    _SEVERITY = {None: 0, "Ctrl-C": 1, "SIGTERM": 2}  # processes that disagree stop for the highest

    def __init__(self, check_every: int = 10):
        self.check_every = check_every
        self.requested: str | None = None
        self._previous_handlers: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # Not on_fit_start: Lightning records the signal handlers in between and reinstates them at teardown.
        self.requested = None
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set signal handlers (and only it receives signals)
        self._previous_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            # An ignored SIGINT (a script's background job) is not for this process: Python does the same.
            self._previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = "SIGTERM"
        log.warning("SIGTERM: stopping after this step and writing last.ckpt")

    def _on_sigint(self, signum, frame) -> None:
        self.requested = self.requested or "Ctrl-C"
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once
        log.warning("Ctrl-C: stopping after this step and writing last.ckpt (press Ctrl-C again to stop now)")

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(signum, handler)
        self._previous_handlers.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        severity = self._SEVERITY[self.requested]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            if trainer.global_step % self.check_every:
                return
            flag = torch.tensor([severity], device=pl_module.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            severity = int(flag.item())
        if severity == self._SEVERITY["SIGTERM"]:
            raise SIGTERMException
        if severity == self._SEVERITY["Ctrl-C"]:
            raise StopRequested("Ctrl-C")

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
        if not isinstance(exception, (SIGTERMException, StopRequested)):
            return
        path = last_checkpoint_path(trainer)
        if path is None:
            return
        # The full state (optimizer, loops, callbacks) for resume; saying so explicitly also keeps Lightning
        # from logging "weights_only was not set", which reads like an unsafe load.
        trainer.save_checkpoint(path, weights_only=False)
        log.warning("stopped at epoch %d, step %d; wrote %s", trainer.current_epoch, trainer.global_step, path)
