"""Cross-entropy and the augmented loss (METHOD.md).

Both take flat logits z (N, V), targets y* (N,), the input embedding L (V, d) and the current alpha,
and return a ``LossOutput``; perplexity is always exp of its ``ce`` part.

Augmented loss, per token t:
    y~_t = softmax(L L[y*_t] / tau)        target from embedding similarity (no gradient by default)
    y^_t = softmax(z_t / tau)               tempered prediction
    J    = CE(z_t, y*_t) + alpha * tau * KL(y~_t || y^_t)
With the factor tau, dJ/dz_t = softmax(z_t) - onehot(y*_t) + alpha * (y^_t - y~_t).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lm.errors import ConfigError


class LossOutput(NamedTuple):
    total: torch.Tensor  # what is minimised
    ce: torch.Tensor  # mean cross-entropy per token (perplexity = exp(ce))
    kl: torch.Tensor  # mean KL(y~ || y^) per token; 0 for plain cross-entropy


class CrossEntropyLoss(nn.Module):
    uses_alpha = False

    def forward(self, logits, targets, embedding, alpha: float = 0.0) -> LossOutput:
        ce = F.cross_entropy(logits.float(), targets)
        return LossOutput(ce, ce, torch.zeros_like(ce))


class AugmentedLoss(nn.Module):
    """Cross-entropy plus ``alpha * tau * KL(y~ || y^)``.

    ``alpha`` here is the configured value that alpha schedules end at; the value in force at each
    step is passed to ``forward``. ``target_grad=True`` lets gradients flow into the embedding
    through the target distribution (an ablation; the paper treats the target as a constant).
    """

    uses_alpha = True

    def __init__(self, alpha: float = 0.5, tau: float = 1.0, target_grad: bool = False):
        super().__init__()
        if not alpha >= 0:
            raise ConfigError(f"loss.alpha must be >= 0, got {alpha}.")
        if not tau > 0:
            raise ConfigError(f"loss.tau must be > 0, got {tau}.")
        self.alpha = alpha
        self.tau = tau
        self.target_grad = target_grad

    def target_distribution(self, targets: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """log y~ for each target word, (N, V) in float32."""
        emb = embedding.float()
        if not self.target_grad:
            emb = emb.detach()
        return F.log_softmax(emb[targets] @ emb.t() / self.tau, dim=-1)

    def forward(self, logits, targets, embedding, alpha: float) -> LossOutput:
        logits = logits.float()  # log-softmax and KL in float32 even under mixed precision
        ce = F.cross_entropy(logits, targets)
        log_target = self.target_distribution(targets, embedding)
        log_pred = F.log_softmax(logits / self.tau, dim=-1)
        kl = F.kl_div(log_pred, log_target, log_target=True, reduction="batchmean")
        return LossOutput(ce + alpha * self.tau * kl, ce, kl)
