"""The LightningModule: carries LSTM state across windows, applies the loss, logs perplexity."""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from lm.callbacks import StopOnNonFiniteLoss
from lm.errors import ConfigError
from lm.metrics import Perplexity
from lm.model import Hidden, LSTMLanguageModel, detach_hidden
from lm.resume import ExactResume
from lm.schedules import Schedule


class LanguageModelTask(pl.LightningModule):
    """Truncated-BPTT training of ``model`` with ``loss``.

    The training state carries over from one window to the next (detached at each step) and starts
    from zeros at every epoch; validation and test keep their own state, reset at their start, so an
    evaluation in the middle of training never disturbs the training stream.

    lr_schedule: makes the learning-rate scheduler from the optimizer (conf/lr_schedule, instantiated
    partially by Hydra); it steps once per epoch, a ``ReduceLROnPlateau`` on val/ppl. None: constant.

    sum_over_time: the objective is summed over the window's time steps and averaged over the batch, as in
    Zaremba et al. (2014) and the paper, so that lr 1 and clipping at 5 mean what they mean there. Logged
    losses stay per token. A window of length L then weighs L / mean as much as a mean-length one (AWD-LSTM's
    scaling for variable-length BPTT); with a per-token mean, ``mean_window`` applies that factor.

    freeze_embedding_epochs: no embedding update in the first N epochs (its gradient is dropped before
    clipping and the step, which keeps DDP's buckets as they are); tied, the classifier is held too.

    ``configure_callbacks`` adds exact resume (lm/resume.py) and the stop on a non-finite loss.
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
        self.hidden: dict[str, Hidden | None] = {"train": None, "val": None, "test": None}  # carried per stage
        self.windows_done = 0  # training windows finished in the current epoch

    # -- state carried across windows --------------------------------------------------------
    def _state(self, stage: str, batch_size: int) -> Hidden:
        hidden = self.hidden[stage]
        if hidden is None or hidden[0][0].size(1) != batch_size:
            hidden = self.model.init_hidden(batch_size)
        return hidden

    def _set_loader_epoch(self) -> None:
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):  # variable-length BPTT: this epoch's windows
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_start(self) -> None:  # not called again when a run resumes mid-epoch
        self.hidden["train"] = None
        self.windows_done = 0
        self._set_loader_epoch()

    def on_train_start(self) -> None:
        self._set_loader_epoch()  # a run resumed mid-epoch continues in that epoch's windows

    def configure_callbacks(self) -> list[pl.Callback]:
        return [ExactResume(), StopOnNonFiniteLoss()]  # part of training, whatever the callbacks config

    def on_validation_epoch_start(self) -> None:
        self.hidden["val"] = None
        self.val_ppl.reset()

    def on_test_epoch_start(self) -> None:
        self.hidden["test"] = None
        self.test_ppl.reset()

    # -- steps -------------------------------------------------------------------------------
    def _position(self, batch_idx: int | None) -> tuple[float, int]:
        """(epochs, optimizer steps) done before training window ``batch_idx`` of this epoch; None: before
        the latest window trained (the step a validation follows)."""
        step = self.global_step
        if batch_idx is None:
            batch_idx, step = max(self.windows_done - 1, 0), max(step - 1, 0)
        return self.current_epoch + batch_idx / max(self.trainer.num_training_batches, 1), step

    @property
    def augmented(self) -> bool:
        """Whether the loss has an augmented term, whose alpha and tau the schedules produce."""
        return self.alpha_schedule is not None

    def current_alpha(self, batch_idx: int | None = None) -> float:
        """alpha at window ``batch_idx`` of this epoch (None: the latest trained); 0 without an augmented term."""
        if self.alpha_schedule is None:
            return 0.0
        return self.alpha_schedule(*self._position(batch_idx))

    def current_tau(self, batch_idx: int | None = None) -> float:
        """tau at window ``batch_idx`` of this epoch (None: the latest trained); 1 without an augmented term."""
        if self.tau_schedule is None:
            return 1.0
        return self.tau_schedule(*self._position(batch_idx))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch  # (T, B) each; y is x shifted by one step
        logits, hidden = self.model(x, self._state("train", x.size(1)))
        self.hidden["train"] = detach_hidden(hidden)
        alpha, tau = self.current_alpha(batch_idx), self.current_tau(batch_idx)
        scale = self._objective_scale(x.size(0))
        out = self.loss(logits.view(-1, logits.size(-1)), y.reshape(-1), self.model.embedding.weight, alpha=alpha,
                        tau=tau, step=self.global_step, bias=self.model.decoder.bias, grad_scale=scale)
        if self._logging_step():
            n = y.numel()
            self.log("train/loss", out.total, prog_bar=True, batch_size=n)
            self.log("train/ppl", torch.exp(out.ce.detach()), prog_bar=True, batch_size=n)
            if self.augmented:
                self.log("train/kl", out.kl, batch_size=n)
                self.log("alpha", alpha, batch_size=n)
                self.log("tau", tau, batch_size=n)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        self.windows_done = batch_idx + 1
        return out.total * scale

    def _objective_scale(self, steps: int) -> float:
        """What the per-token loss of a window of ``steps`` time steps is multiplied by (``sum_over_time``)."""
        if self.sum_over_time:
            return float(steps)
        return steps / self.mean_window if self.mean_window else 1.0

    def _logging_step(self) -> bool:
        """Whether Lightning writes step metrics after this step: each ``self.log`` costs about 1 ms on a CPU."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (self.global_step + 1) % every == 0)

    def _eval_step(self, stage: str, metric: Perplexity, batch) -> torch.Tensor:
        x, y = batch
        logits, hidden = self.model(x, self._state(stage, x.size(1)))
        self.hidden[stage] = hidden
        logits = logits.view(-1, logits.size(-1))
        ce = nn.functional.cross_entropy(logits.float(), y.reshape(-1))
        metric.update(ce, y.numel())
        return logits

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Returns the logits (N, V), which PaperDiagnostics reads."""
        logits = self._eval_step("val", self.val_ppl, batch)
        self.log("val/ppl", self.val_ppl, prog_bar=True, on_step=False, on_epoch=True)
        return logits

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

    # -- checkpoint ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What scripts need to rebuild the model from a checkpoint alone."""
        if self.vocab is not None:
            checkpoint["vocab"] = self.vocab
        if self.model_config is not None:
            checkpoint["model_config"] = self.model_config
