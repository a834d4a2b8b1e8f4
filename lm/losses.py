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

import logging
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lm.errors import ConfigError

log = logging.getLogger(__name__)
COMPILE_MIN_VOCAB = 2048  # compile="auto": below this the (N, V) passes are too cheap to repay compiling


class LossOutput(NamedTuple):
    total: torch.Tensor  # what is minimised
    ce: torch.Tensor  # mean cross-entropy per token (perplexity = exp(ce))
    kl: torch.Tensor  # mean KL(y~ || y^) per token; 0 for plain cross-entropy


class CrossEntropyLoss(nn.Module):
    def forward(self, logits, targets, embedding, alpha: float = 0.0, tau: float = 1.0, step: int = 0) -> LossOutput:
        """``alpha`` and ``tau`` are ignored: the signature is the augmented loss's."""
        ce = F.cross_entropy(logits.float(), targets)
        return LossOutput(ce, ce, torch.zeros_like(ce))


class AugmentedLoss(nn.Module):
    """Cross-entropy plus ``alpha * tau * KL(y~ || y^)``, fused (see ``augmented_loss``).

    ``alpha`` and ``tau`` are arguments of every call: the values in force at that step, which the
    alpha and tau schedules produce (lm/schedules.py; ``loss.alpha`` and ``loss.tau`` in the configs are
    the values they end at). ``target_grad=True`` lets gradients flow into the embedding
    through the target distribution (an ablation; the paper treats the target as a constant).

    ``target_refresh=K`` builds ``y~`` from a frozen copy of the embedding taken every K training
    steps (``step % K == 0``), like a target network in reinforcement learning, instead of from the
    embedding that moves every step; K=1 is the paper's loss. It costs one copy of the embedding.
    """

    def __init__(self, target_grad: bool = False, chunk_elements: int = 1 << 23, compile: bool | str = "auto",
                 target_refresh: int = 1):
        super().__init__()
        if not isinstance(target_refresh, int) or target_refresh < 1:
            raise ConfigError(f"loss.target_refresh must be a positive integer (steps), got {target_refresh!r}.")
        if target_refresh > 1 and target_grad:
            raise ConfigError("loss.target_grad=true needs loss.target_refresh=1: a frozen copy of the embedding "
                              "passes no gradient.")
        self.target_refresh = target_refresh
        self.target_snapshot: torch.Tensor | None = None
        if compile not in (True, False, "auto"):
            raise ConfigError(f"loss.compile must be true, false or auto, got {compile!r}.")
        self.compile = compile
        self.kernels = Kernels() if compile else None  # this loss's own: a failed compile falls back here only
        self.target_grad = target_grad
        self.chunk_elements = chunk_elements

    def forward(self, logits, targets, embedding, alpha: float, tau: float, step: int = 0) -> LossOutput:
        if self.target_refresh > 1:
            if self.target_snapshot is None or step % self.target_refresh == 0:
                self.target_snapshot = embedding.detach().clone()
            embedding = self.target_snapshot
        compiled = self.compile is True or (self.compile == "auto" and logits.size(-1) >= COMPILE_MIN_VOCAB)
        return augmented_loss(logits, targets, embedding, alpha, tau, self.target_grad, self.chunk_elements,
                              self.kernels if compiled else None)


def augmented_loss(logits, targets, embedding, alpha: float, tau: float, target_grad: bool = False,
                   chunk_elements: int = 1 << 23, kernels: Kernels | None = None) -> LossOutput:
    """The augmented loss with its gradient in closed form.

    Autograd through softmax, log-softmax and KL would keep several (N, V) intermediates alive and
    compute each twice. Instead the forward pass computes the loss and, row chunk by row chunk
    (at most ``chunk_elements`` elements per temporary), the gradient with respect to the logits,
    ``(softmax(z) - onehot(y*) + alpha * (softmax(z / tau) - y~)) / N``, which backward only scales.
    ``y~`` is computed once per distinct target word in the batch, not once per token.

    ``kernels`` (a ``Kernels``) runs the per-token work through ``torch.compile``, which fuses forming
    ``y~`` from its logits, both softmaxes, the KL sum and the gradient into about two passes over each
    chunk (the eager code needs eight); where compiling fails (no C++ compiler, no Triton) it warns
    once and those kernels stay eager. The gradient-through-target option always runs eagerly.
    """
    return LossOutput(*_FusedAugmentedLoss.apply(logits, targets, embedding, alpha, tau, target_grad, chunk_elements,
                                                 None if target_grad else kernels))


def _target_logits(rows: torch.Tensor, emb: torch.Tensor, tau) -> tuple[torch.Tensor, torch.Tensor]:
    """log y~ = S - lse for each distinct target word: S = rows L^T / tau (U, V) and lse (U,). y~ itself
    is formed from them inside ``_token_terms``, where its (U, V) table would otherwise be written once
    here and read back there; the matmul is the irreducible cost of the augmented loss."""
    logits = (rows / tau) @ emb.t()
    return logits, torch.logsumexp(logits, dim=-1)


def _token_terms(z, y, u, target_logits, target_lse, alpha, tau, inv_n, tau_is_one: bool):
    """For a chunk of rows: sum of CE, sum of KL(y~ || y^), and the gradient of the mean total loss
    w.r.t. z. Written without in-place ops so that torch.compile can fuse it."""
    log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)
    ce_sum = -log_p.gather(1, y[:, None]).sum()
    p = torch.exp(log_p)
    if tau_is_one:
        log_pred, pred = log_p, p
    else:
        log_pred = z / tau - torch.logsumexp(z / tau, dim=-1, keepdim=True)
        pred = torch.exp(log_pred)
    log_target = target_logits[u] - target_lse[u][:, None]
    target = torch.exp(log_target)
    kl_sum = (target * (log_target - log_pred)).sum()
    onehot = (torch.arange(z.size(1), device=z.device) == y[:, None]).to(z.dtype)
    return ce_sum, kl_sum, (p + alpha * (pred - target) - onehot) * inv_n


class _Compiled:
    """``torch.compile(fn)`` that falls back to ``fn`` for good, with one warning, if compiling fails."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled: Callable | None = None
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self.compiled(*args)
        except Exception as exc:  # a missing compiler or backend; a real bug fails again below
            log.warning("torch.compile of %s failed (%s: %s); the augmented loss runs eagerly, more slowly "
                        "(loss.compile=false silences this)", self.fn.__name__, type(exc).__name__, exc)
            self.failed = True
            return self.fn(*args)


class Kernels:
    """The two compiled halves of the augmented loss, owned by one loss (``AugmentedLoss.kernels``)."""

    def __init__(self):
        self.target_logits = _Compiled(_target_logits)
        self.token_terms = _Compiled(_token_terms)


class _FusedAugmentedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, embedding, alpha, tau, target_grad, chunk_elements, kernels):
        n, v = logits.shape
        # float32 throughout, also under bf16/fp16 autocast: softmax, log and KL need the range.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            emb = embedding.detach().float()
            words, inverse = torch.unique(targets, return_inverse=True)  # words: (U,), inverse: (N,)
            rows = emb[words]  # (U, d)
            if kernels is not None:
                return _FusedAugmentedLoss._compiled_forward(ctx, kernels, logits, targets, words, inverse, rows, emb,
                                                             alpha, tau, chunk_elements)
            log_target = torch.log_softmax(rows @ emb.t() / tau, dim=-1)  # (U, V): log y~ per distinct word
            target_probs = log_target.exp()  # (U, V): y~
            neg_entropy = (target_probs * log_target).sum(-1)  # (U,): sum y~ log y~

            grad = torch.empty(n, v, dtype=torch.float32, device=logits.device)
            ce_sum = logits.new_zeros((), dtype=torch.float32)
            kl_sum = logits.new_zeros((), dtype=torch.float32)
            log_pred_sum = torch.zeros_like(log_target) if target_grad else None  # sum of log y^ per word
            chunk = max(1, chunk_elements // v)
            for start in range(0, n, chunk):
                end = min(start + chunk, n)
                z = logits[start:end].float()  # (C, V)
                y, u = targets[start:end], inverse[start:end]
                g = grad[start:end]
                torch.log_softmax(z, dim=-1, out=g)  # log softmax(z), kept in the gradient buffer
                ce_sum -= g.gather(1, y[:, None]).sum()
                target = target_probs.index_select(0, u)  # (C, V): y~ of each row's word (a copy, no exp)
                # tau = 1 (the default) needs no second softmax: y^ = softmax(z).
                log_pred = g if tau == 1.0 else torch.log_softmax(z / tau, dim=-1)  # (C, V): log y^
                kl_sum += neg_entropy[u].sum() - torch.dot(target.view(-1), log_pred.reshape(-1))
                if target_grad:
                    log_pred_sum.index_add_(0, u, log_pred)
                if tau == 1.0:
                    g.exp_().mul_(1.0 + alpha)  # softmax(z) + alpha y^
                else:
                    g.exp_().add_(log_pred.exp_(), alpha=alpha)
                g.sub_(target, alpha=alpha)  # - alpha y~
                g[torch.arange(end - start, device=g.device), y] -= 1.0  # - onehot(y*)
            grad.div_(n)

            grad_emb = None
            if target_grad:
                # d(alpha tau KL / N) / dS for S = rows @ emb.T / tau, summed over each word's rows:
                # y~ * (count log y~ - sum log y^ - (count sum y~ log y~ - <y~, sum log y^>)).
                count = torch.bincount(inverse, minlength=words.numel()).float()[:, None]
                c = count[:, 0] * neg_entropy - (target_probs * log_pred_sum).sum(-1)
                grad_s = target_probs * (count * log_target - log_pred_sum - c[:, None]) * (alpha * tau / n)
                grad_s /= tau  # S = rows @ emb.T / tau
                grad_emb = grad_s.t() @ rows  # through the similarity to every word
                grad_emb.index_add_(0, words, grad_s @ emb)  # through each target word's own row
                grad_emb = grad_emb.to(embedding.dtype)

        return _FusedAugmentedLoss._finish(ctx, logits, grad, grad_emb, ce_sum, kl_sum, alpha, tau)

    @staticmethod
    def _compiled_forward(ctx, kernels, logits, targets, words, inverse, rows, emb, alpha, tau, chunk_elements):
        n, v = logits.shape
        # Tensors, not floats: a float would be baked into the compiled code and recompiled for every
        # value an alpha or tau schedule takes.
        # torch.full, not torch.tensor: a fill on the device, not a copy from the host.
        alpha_t = torch.full((), alpha, dtype=torch.float32, device=logits.device)
        tau_t = torch.full((), tau, dtype=torch.float32, device=logits.device)
        target_logits, target_lse = kernels.target_logits(rows, emb, tau_t)
        inv_n = torch.full((), 1.0 / n, dtype=torch.float32, device=logits.device)
        chunk = max(1, chunk_elements // v)
        grad = None if chunk >= n else torch.empty(n, v, dtype=torch.float32, device=logits.device)
        ce_sum = kl_sum = 0.0
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            u = inverse[start:end]
            ce_part, kl_part, g = kernels.token_terms(logits[start:end].float(), targets[start:end], u,
                                                      target_logits, target_lse, alpha_t, tau_t, inv_n, tau == 1.0)
            ce_sum = ce_sum + ce_part
            kl_sum = kl_sum + kl_part
            if grad is None:
                grad = g  # one chunk: the kernel's output is the buffer
            else:
                grad[start:end] = g
        return _FusedAugmentedLoss._finish(ctx, logits, grad, None, ce_sum, kl_sum, alpha, tau)

    @staticmethod
    def _finish(ctx, logits, grad, grad_emb, ce_sum, kl_sum, alpha, tau):
        n = logits.size(0)
        ce = ce_sum / n
        kl = kl_sum / n
        ctx.save_for_backward(grad, grad_emb)
        ctx.logits_dtype = logits.dtype
        ctx.target_grad = grad_emb is not None
        ctx.backward_done = False
        ctx.mark_non_differentiable(ce, kl)
        return ce + alpha * tau * kl, ce, kl

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        if ctx.backward_done:
            raise RuntimeError("the fused augmented loss supports one backward pass per forward (no retain_graph)")
        ctx.backward_done = True
        grad, grad_emb = ctx.saved_tensors
        # In place: the buffer is this step's alone, and not allocating a second (N, V) tensor is the point.
        grad_logits = grad.mul_(grad_total).to(ctx.logits_dtype)
        grad_embedding = grad_emb * grad_total if ctx.target_grad else None
        return grad_logits, None, grad_embedding, None, None, None, None, None
