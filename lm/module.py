"""The LightningModule: carries LSTM state across windows, applies the loss, logs perplexity."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from lm.errors import ConfigError, UserError
from lm.metrics import Perplexity
from lm.model import Hidden, LSTMLanguageModel, detach_hidden
from lm.schedules import Schedule

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the run stops without saving."""


def _rng_state(device: torch.device) -> dict:
    """This process's dropout RNG: the CPU generator and, on a GPU, the generator of its own device."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].clone())  # clone: a view's storage offset would be ignored
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].clone(), device)


def seed_rank(seed: int, rank: int) -> None:
    """Seed this process's dropout masks by rank (the data order does not depend on it): with one seed
    on every rank, stream j and stream j + B/N of a DDP run would draw identical masks."""
    torch.manual_seed(seed + 1_000_003 * rank)  # also seeds every CUDA device


class LanguageModelTask(pl.LightningModule):
    """Truncated-BPTT training of ``model`` with ``loss``.

    The training state carries over from one window to the next (detached at each step) and starts
    from zeros at every epoch; validation and test keep their own state, reset at their start, so an
    evaluation in the middle of training never disturbs the training stream.

    lr_schedule: makes the learning-rate scheduler from the optimizer (conf/lr_schedule, instantiated
    partially by Hydra); it steps once per epoch, a ``ReduceLROnPlateau`` on val/ppl. None: constant.

    sum_over_time: the objective is summed over the window's time steps and averaged over the
    batch, as in Zaremba et al. (2014) and the paper's setup, so that lr 1 and clipping at 5 mean
    what they mean there (lr 1 here is lr 35 on a per-token mean). Logged losses stay per token.
    A window of length L therefore weighs L / mean as much as a mean-length one: AWD-LSTM's learning
    rate scaling for variable-length BPTT. With a per-token mean, ``mean_window`` (the mean length, set
    under variable-length BPTT) applies that factor explicitly.

    freeze_embedding_epochs: the embedding gets no update in the first N epochs (its gradient is
    dropped before clipping and the optimizer step, which keeps DDP's gradient buckets as they are).
    With tied weights that also holds the classifier fixed, since it is the same matrix.

    Resuming: checkpoints also hold the carried training state and the RNG state (dropout masks), so a
    run stopped mid-epoch continues with the same windows, state and masks as if never stopped.
    A non-finite training loss raises ``NonFiniteLoss`` naming the step and the last checkpoint.
    """

    def __init__(
        self,
        model: LSTMLanguageModel,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_schedule: Callable[[torch.optim.Optimizer], Any] | None = None,
        alpha_schedule: Schedule | None = None,
        tau_schedule: Schedule | None = None,
        vocab: list[str] | None = None,
        sum_over_time: bool = True,
        model_config: dict | None = None,
        freeze_embedding_epochs: int = 0,
        mean_window: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        if (alpha_schedule is None) != (tau_schedule is None):
            raise ConfigError("an augmented loss needs both an alpha and a tau schedule; cross-entropy takes neither.")
        if tau_schedule is not None and not min(tau_schedule.start, tau_schedule.end) > 0:
            raise ConfigError(f"the tau schedule must stay > 0, got start {tau_schedule.start}, end {tau_schedule.end}.")
        self.alpha_schedule = alpha_schedule
        self.tau_schedule = tau_schedule
        self.vocab = vocab
        self.sum_over_time = sum_over_time
        self.mean_window = mean_window
        self.model_config = model_config  # saved with checkpoints, so that scripts can rebuild the model
        if not isinstance(freeze_embedding_epochs, int) or freeze_embedding_epochs < 0:
            raise ConfigError(
                f"model.freeze_embedding_epochs must be an integer >= 0, got {freeze_embedding_epochs!r}."
            )
        self.freeze_embedding_epochs = freeze_embedding_epochs
        self.val_ppl = Perplexity()
        self.test_ppl = Perplexity()
        self._hidden: dict[str, Hidden | None] = {"train": None, "val": None, "test": None}
        self._resumed: dict | None = None  # what on_load_checkpoint read, applied in on_train_start
        self._windows_done = 0  # training windows finished in the current epoch
        self._unchecked_loss: tuple[torch.Tensor, int, int] | None = None

    # -- state carried across windows --------------------------------------------------------
    def _state(self, stage: str, batch_size: int) -> Hidden:
        hidden = self._hidden[stage]
        if hidden is None or hidden[0][0].size(1) != batch_size:
            hidden = self.model.init_hidden(batch_size)
        return hidden

    def _set_loader_epoch(self) -> None:
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):  # variable-length BPTT: this epoch's windows
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_start(self) -> None:  # not called again when a run resumes mid-epoch
        self._hidden["train"] = None
        self._windows_done = 0
        self._set_loader_epoch()

    def on_train_start(self) -> None:
        self._set_loader_epoch()  # a run resumed mid-epoch continues in that epoch's windows
        resumed, self._resumed = self._resumed, None
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if resumed is None:
            if world > 1:
                seed_rank(torch.initial_seed(), rank)
            return
        saved = resumed["rng"]
        saved = [saved] if isinstance(saved, dict) else saved  # one process's state, or one per rank
        if len(saved) == world:
            _set_rng_state(saved[rank], self.device)
        else:  # resumed on another number of processes: fresh masks, still distinct per rank
            log.warning("the checkpoint holds the RNG state of %d processes and this run has %d: dropout masks "
                        "are drawn afresh, so the run is equivalent to, not identical with, an unbroken one",
                        len(saved), world)
            seed_rank(torch.initial_seed() + self.global_step, rank)
        if resumed["target_snapshot"] is not None and hasattr(self.loss, "target_snapshot"):
            self.loss.target_snapshot = resumed["target_snapshot"].to(self.device)
        done = resumed["windows_done"]
        if 0 < done < self.trainer.num_training_batches:  # stopped mid-epoch: continue at the next window
            self._windows_done = done
            self._hidden["train"] = [(h.to(self.device), c.to(self.device)) for h, c in resumed["hidden"]]
            self.trainer.train_dataloader.start_at(done)
            bar = self.trainer.progress_bar_callback
            if bar is not None:  # Lightning skips the epoch-start hooks here, so the bar lacks its total
                bar.on_train_epoch_start(self.trainer, self)

    def on_validation_epoch_start(self) -> None:
        self._hidden["val"] = None
        self.val_ppl.reset()

    def on_test_epoch_start(self) -> None:
        self._hidden["test"] = None
        self.test_ppl.reset()

    # -- steps -------------------------------------------------------------------------------
    def _position(self, batch_idx: int | None) -> tuple[float, int]:
        """(epochs, optimizer steps) done before training window ``batch_idx`` of this epoch; None: before
        the latest window trained (the step a validation follows)."""
        step = self.global_step
        if batch_idx is None:
            batch_idx, step = max(self._windows_done - 1, 0), max(step - 1, 0)
        return self.current_epoch + batch_idx / max(self.trainer.num_training_batches, 1), step

    @property
    def augmented(self) -> bool:
        """Whether the loss has an augmented term, whose alpha and tau the schedules produce."""
        return self.alpha_schedule is not None

    def current_alpha(self, batch_idx: int | None = None) -> float:
        """alpha at training window ``batch_idx`` of this epoch (None: the latest window trained); 0 without
        an augmented term."""
        if self.alpha_schedule is None:
            return 0.0
        return self.alpha_schedule(*self._position(batch_idx))

    def current_tau(self, batch_idx: int | None = None) -> float:
        """tau at training window ``batch_idx`` of this epoch (None: the latest window trained); 1 without
        an augmented term."""
        if self.tau_schedule is None:
            return 1.0
        return self.tau_schedule(*self._position(batch_idx))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch  # (T, B) each; y is x shifted by one step
        logits, hidden = self.model(x, self._state("train", x.size(1)))
        self._hidden["train"] = detach_hidden(hidden)
        alpha, tau = self.current_alpha(batch_idx), self.current_tau(batch_idx)
        out = self.loss(logits.view(-1, logits.size(-1)), y.reshape(-1), self.model.embedding.weight, alpha=alpha,
                        tau=tau, step=self.global_step, bias=self.model.decoder.bias)
        if self._logging_step():
            n = y.numel()
            self.log("train/loss", out.total, prog_bar=True, batch_size=n)
            self.log("train/ppl", torch.exp(out.ce.detach()), prog_bar=True, batch_size=n)
            if self.augmented:
                self.log("train/kl", out.kl, batch_size=n)
                self.log("alpha", alpha, batch_size=n)
                self.log("tau", tau, batch_size=n)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        self._check_finite(out.total.detach(), batch_idx)
        self._windows_done = batch_idx + 1
        if self.sum_over_time:
            return out.total * x.size(0)
        return out.total * (x.size(0) / self.mean_window) if self.mean_window else out.total

    def _logging_step(self) -> bool:
        """Whether Lightning writes step metrics after this step (every ``log_every_n_steps``). Each
        ``self.log`` costs about a millisecond on a CPU, so the other steps skip it."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (self.global_step + 1) % every == 0)

    # -- non-finite loss guard --------------------------------------------------------------
    def _check_finite(self, loss: torch.Tensor | None, batch_idx: int = 0) -> None:
        """Stop on a NaN/inf loss. On a GPU the previous step's loss is read (already computed, so the
        read does not wait for the current step); ``loss=None`` flushes the pending one."""
        pending, self._unchecked_loss = self._unchecked_loss, None
        if loss is not None:
            current = (loss, self.global_step, batch_idx)
            if loss.device.type == "cuda":
                self._unchecked_loss = current
            else:
                pending = current
        if pending is None:
            return
        value, step, window = pending
        bad = (~torch.isfinite(value)).to(torch.float32)
        if self.trainer.world_size > 1:  # every rank stops at the same step, or the others would hang
            bad = self.trainer.strategy.reduce(bad.clone(), reduce_op="max")  # in the next collective
        if not bad.item():
            return
        where = "" if not torch.isfinite(value).item() or self.trainer.world_size == 1 else " on another process"
        callback = self.trainer.checkpoint_callback
        last = callback and (callback.last_model_path or callback.best_model_path)
        raise NonFiniteLoss(
            f"training loss is {'not finite' if where else value.item()}{where} at step {step} "
            f"(epoch {self.current_epoch}, window {window}); "
            f"stopped without saving, so checkpoints keep the last finite model"
            + (f": resume from {last}" if last else " (none was written yet)")
            + ". Lower the learning rate (optim.optimizer.lr) or clip harder (trainer.gradient_clip_val)."
        )

    def on_validation_start(self) -> None:
        self._check_finite(None)  # before a validation end can write a checkpoint

    def on_train_end(self) -> None:
        self._check_finite(None)

    def _eval_step(self, stage: str, metric: Perplexity, batch) -> None:
        x, y = batch
        logits, hidden = self.model(x, self._state(stage, x.size(1)))
        self._hidden[stage] = hidden
        ce = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))
        metric.update(ce, y.numel())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", self.val_ppl, batch)
        self.log("val/ppl", self.val_ppl, prog_bar=True, on_step=False, on_epoch=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", self.test_ppl, batch)
        self.log("test/ppl", self.test_ppl, on_step=False, on_epoch=True)

    # -- optimisation ------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        if self.current_epoch < self.freeze_embedding_epochs:
            self.model.embedding.weight.grad = None

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.lr_schedule is None:
            return optimizer
        scheduler = {"scheduler": self.lr_schedule(optimizer), "interval": "epoch"}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = "val/ppl"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # -- checkpoint --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.vocab is not None:
            checkpoint["vocab"] = self.vocab
        if self.model_config is not None:
            checkpoint["model_config"] = self.model_config
        hidden = self._hidden["train"]
        checkpoint["train_hidden"] = None if hidden is None else [(h.cpu(), c.cpu()) for h, c in hidden]
        checkpoint["train_windows_done"] = self._windows_done
        checkpoint["rng"] = self._all_rng_states()
        snapshot = getattr(self.loss, "target_snapshot", None)  # loss.target_refresh > 1
        checkpoint["target_snapshot"] = None if snapshot is None else snapshot.cpu()

    def _all_rng_states(self) -> list[dict]:
        """Every rank's RNG state, in rank order (every rank saves a checkpoint at the same step)."""
        mine = _rng_state(self.device)
        if self.trainer.world_size == 1:
            return [mine]
        gathered = {key: self.trainer.strategy.all_gather(value.to(self.device)).cpu() for key, value in mine.items()}
        return [{key: value[r] for key, value in gathered.items()} for r in range(self.trainer.world_size)]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            self._resumed = {
                "hidden": checkpoint["train_hidden"],
                "windows_done": checkpoint["train_windows_done"],
                "rng": checkpoint["rng"],
                "target_snapshot": checkpoint.get("target_snapshot"),
            }
