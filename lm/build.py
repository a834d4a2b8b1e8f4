"""Build the data module, the Lightning task and the trainer from a composed Hydra config."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lm.data import CorpusDataModule, Vocabulary
from lm.errors import ConfigError
from lm.module import LanguageModelTask
from lm.pretrained import init_embedding
from lm.schedules import Schedule

# model.* keys that build_task applies after building the model, not arguments of LSTMLanguageModel
_APPLIED_AFTER = ("pretrained_vectors", "freeze_embedding_epochs")
# loss.* keys that are the values the alpha and tau schedules end at (conf/alpha_schedule, conf/tau_schedule),
# not arguments of the loss: the schedules produce the value in force at every step and the loss takes it per call
_SCHEDULED = ("alpha", "tau")


def model_config(cfg: DictConfig) -> dict:
    """LSTMLanguageModel's arguments from ``cfg.model`` (also what checkpoints keep to rebuild it)."""
    config = OmegaConf.to_container(cfg.model, resolve=True)
    for key in _APPLIED_AFTER:
        config.pop(key, None)
    return config


def build_datamodule(cfg: DictConfig) -> CorpusDataModule:
    """Data module with its vocabulary ready (the model's size depends on it)."""
    datamodule: CorpusDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def build_task(cfg: DictConfig, vocab: Vocabulary, from_checkpoint: bool = False) -> LanguageModelTask:
    """The task for ``cfg`` over ``vocab`` (a data module's ``vocab``). ``from_checkpoint``: the weights will
    come from a checkpoint, so pre-trained vectors are not read (a resumed run or an evaluation needs
    neither the file nor the time to scan it)."""
    config = model_config(cfg)
    model = instantiate(config, vocab_size=len(vocab))
    if cfg.model.get("pretrained_vectors") and not from_checkpoint:
        init_embedding(model.embedding, cfg.model.pretrained_vectors, vocab.itos)
    loss, alpha_schedule, tau_schedule = build_loss(cfg)
    return LanguageModelTask(
        model=model,
        loss=loss,
        optimizer=instantiate(cfg.optim.optimizer),
        lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        alpha_schedule=alpha_schedule,
        tau_schedule=tau_schedule,
        vocab=vocab.itos,
        sum_over_time=cfg.optim.sum_over_time,
        model_config=config,
        freeze_embedding_epochs=cfg.model.get("freeze_embedding_epochs", 0),
        mean_window=cfg.data.bptt if cfg.data.get("variable_bptt") else None,
    )


def build_loss(cfg: DictConfig) -> tuple[torch.nn.Module, Schedule | None, Schedule | None]:
    """The loss and, for one with an augmented term (its config declares ``alpha`` and ``tau``), the alpha
    and tau schedules that produce the values in force at each step."""
    loss = instantiate(OmegaConf.masked_copy(cfg.loss, [k for k in cfg.loss if k not in _SCHEDULED]))
    if "alpha" not in cfg.loss:
        return loss, None, None
    alpha, tau = cfg.loss.alpha, cfg.loss.get("tau", 1.0)
    if not alpha > 0:
        raise ConfigError(f"loss.alpha must be > 0, got {alpha}. (alpha 0 is cross-entropy: use loss=ce.)")
    if not tau > 0:
        raise ConfigError(f"loss.tau must be > 0, got {tau}.")
    return loss, instantiate(cfg.alpha_schedule), instantiate(cfg.tau_schedule)


def _instantiate_dict(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def enable_tf32(accelerator: str) -> bool:
    """Float32 matrix products in TF32 on a GPU run (Ampere or newer; elsewhere a no-op): the classifier and
    the LSTMs, which run in float32 also under autocast (lm/model.py), at tensor-core speed. Not on CPU."""
    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def build_trainer(cfg: DictConfig, with_callbacks: bool = True, with_logger: bool = True) -> pl.Trainer:
    enable_tf32(str(cfg.trainer.get("accelerator", "auto")))
    callbacks = _instantiate_dict(cfg.get("callbacks")) if with_callbacks else []
    loggers = _instantiate_dict(cfg.get("logger")) if with_logger else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)


def close_distributed() -> None:
    """Destroy the DDP process group at the end of a run that succeeded, on every rank.

    Left to the interpreter's exit, gloo's worker threads can outlive Python's finalization and the
    process aborts ("terminate called without an active exception", exit status -6) after its work
    is done. Not called on errors: a rank that destroys the group while another still waits in a
    collective would hang it.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
