"""Cross-entropy and the augmented loss (docs/method.md).

Both take flat logits z (N, V), targets y* (N,), the input embedding L (V, d), the current alpha and tau,
and the classifier's output bias b (or None), and return a ``LossOutput``; perplexity is always exp of
its ``ce`` part.

Augmented loss, per token t:
    y~_t = softmax(L L[y*_t] / tau)        target from embedding similarity (no gradient by default)
    y^_t = softmax((z_t - b) / tau)         tempered prediction, without the bias as in the paper's eq. 3.1
                                            (pred_bias=true: softmax(z_t / tau), the bias included)
    J    = CE(z_t, y*_t) + alpha * tau * KL(y~_t || y^_t)
With the factor tau, dJ/dz_t = softmax(z_t) - onehot(y*_t) + alpha * (y^_t - y~_t), and the bias, which
reaches y^ through z and is taken out again, gets the cross-entropy part alone: sum_t softmax(z_t) - onehot.
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
    total: torch.Tensor  # what is minimised, per token (training multiplies it by grad_scale)
    ce: torch.Tensor  # mean cross-entropy per token (perplexity = exp(ce))
    kl: torch.Tensor  # mean KL(y~ || y^) per token; 0 for plain cross-entropy


class Loss(nn.Module):
    """What the task calls: ``forward`` as below, and the state a loss carries from step to step, which a
    checkpoint keeps for an exact resume (lm/resume.py); none by default.

    ``grad_scale``, an argument of every call, is the factor the caller multiplies ``total`` by before
    backward (the window length under ``optim.sum_over_time``). It changes no value: a loss may use it to
    form its gradient ready-scaled.
    """

    def carried_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_carried_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class CrossEntropyLoss(Loss):
    def forward(self, logits, targets, embedding, alpha: float = 0.0, tau: float = 1.0, step: int = 0,
                bias: torch.Tensor | None = None, grad_scale: float = 1.0) -> LossOutput:
        """Only ``logits`` and ``targets`` are used: the signature is the augmented loss's."""
        ce = F.cross_entropy(logits.float(), targets)
        return LossOutput(ce, ce, torch.zeros_like(ce))


class AugmentedLoss(Loss):
    """Cross-entropy plus ``alpha * tau * KL(y~ || y^)``, fused (see ``augmented_loss``).

    ``alpha`` and ``tau`` are arguments of every call: the values in force at that step, which the
    alpha and tau schedules produce (lm/schedules.py; ``loss.alpha`` and ``loss.tau`` in the configs are
    the values they end at).

    Options (conf/loss/augmented.yaml): ``target_grad`` lets gradients flow into the embedding through
    ``y~``; ``pred_bias`` keeps the output bias in ``y^``; ``centre_target`` forms ``y~`` from ``L`` with
    its mean row removed, so that a direction shared by every word vector does not rank the target;
    ``target_refresh=K`` forms ``y~`` from a copy of the embedding taken every K training steps (a fixed
    target, like a target network), K=1 being the paper's loss.
    """

    def __init__(self, target_grad: bool = False, chunk_elements: int = 1 << 23, compile: bool | str = "auto",
                 target_refresh: int = 1, pred_bias: bool = True, centre_target: bool = False):
        super().__init__()
        if not isinstance(target_refresh, int) or target_refresh < 1:
            raise ConfigError(f"loss.target_refresh must be a positive integer (steps), got {target_refresh!r}.")
        if target_refresh > 1 and target_grad:
            raise ConfigError("loss.target_grad=true needs loss.target_refresh=1: a frozen copy of the embedding "
                              "passes no gradient.")
        for name, value in (("pred_bias", pred_bias), ("centre_target", centre_target)):
            if not isinstance(value, bool):
                raise ConfigError(f"loss.{name} must be true or false, got {value!r}.")
        if compile not in (True, False, "auto"):
            raise ConfigError(f"loss.compile must be true, false or auto, got {compile!r}.")
        self.target_refresh = target_refresh
        self.target_snapshot: torch.Tensor | None = None
        self.compile = compile
        self.kernels = Kernels() if compile else None  # this loss's own: a failed compile falls back here only
        self.target_grad = target_grad
        self.pred_bias = pred_bias
        self.centre_target = centre_target
        self.chunk_elements = chunk_elements

    def carried_state(self) -> dict[str, torch.Tensor]:
        return {} if self.target_snapshot is None else {"target_snapshot": self.target_snapshot}

    def load_carried_state(self, state: dict[str, torch.Tensor]) -> None:
        self.target_snapshot = state.get("target_snapshot")

    def target_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """The matrix ``y~`` is formed from: ``L``, or ``L`` less its mean row with ``centre_target``."""
        return embedding - embedding.mean(0) if self.centre_target else embedding

    def forward(self, logits, targets, embedding, alpha: float, tau: float, step: int = 0,
                bias: torch.Tensor | None = None, grad_scale: float = 1.0) -> LossOutput:
        if self.target_refresh > 1:
            if self.target_snapshot is None or step % self.target_refresh == 0:
                self.target_snapshot = embedding.detach().clone()
            embedding = self.target_snapshot
        compiled = self.compile is True or (self.compile == "auto" and logits.size(-1) >= COMPILE_MIN_VOCAB)
        return augmented_loss(logits, targets, embedding, alpha, tau, target_grad=self.target_grad,
                              centre_target=self.centre_target, bias=None if self.pred_bias else bias,
                              chunk_elements=self.chunk_elements, kernels=self.kernels if compiled else None,
                              grad_scale=grad_scale)


def augmented_loss(logits, targets, embedding, alpha: float, tau: float, target_grad: bool = False,
                   centre_target: bool = False, bias: torch.Tensor | None = None, chunk_elements: int = 1 << 23,
                   kernels: Kernels | None = None, grad_scale: float = 1.0) -> LossOutput:
    """The augmented loss with its gradient in closed form; ``bias``, when given, is taken out of ``y^``.

    Autograd through softmax, log-softmax and KL would keep several (N, V) intermediates alive and
    compute each twice. Instead the forward pass computes the loss and, row chunk by row chunk
    (at most ``chunk_elements`` elements per temporary), the gradient with respect to the logits,
    ``(softmax(z) - onehot(y*) + alpha * (y^ - y~)) * grad_scale / N``, in bfloat16 when the logits are
    (float32 otherwise). On a CPU, backward hands it on as it is when the upstream gradient is
    ``grad_scale``, as in training, and otherwise multiplies it by their ratio: no pass over (N, V) in
    training, and one rounding to bfloat16. On an accelerator it always multiplies (by exactly 1 in
    training), since reading the ratio would make it wait. ``y~`` is formed once per distinct target word
    in the batch, not once per token.

    ``kernels`` (a ``Kernels``) runs the same two functions through ``torch.compile``, which fuses each
    chunk's work into about two passes over it; where compiling fails (no C++ compiler, no Triton) it
    warns once and runs them eagerly.
    """
    return LossOutput(*_FusedAugmentedLoss.apply(logits, targets, embedding, bias, alpha, tau, target_grad,
                                                 centre_target, chunk_elements, kernels, grad_scale))


def _target_logits(rows: torch.Tensor, emb: torch.Tensor, tau,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """log y~ = S - lse for each distinct target word: S = rows L^T / tau (U, V) and lse (U,). y~ itself is
    formed from them in ``_chunk_terms``. The matmul, the irreducible cost of the augmented loss, runs in
    ``dtype``: the logits' own under mixed precision, which is faster (docs/results.md, Speed). S stays in
    that dtype, as the matmul rounded it, and is read as float32 where it is used (lse is float32): a
    float32 copy would hold the same values in twice the memory, written here and read again per token."""
    logits = (rows / tau).to(dtype) @ emb.to(dtype).t()
    return logits, torch.logsumexp(logits.float(), dim=-1)


def _chunk_terms(z, y, u, target_logits, target_lse, alpha, tau, unit, bias, pred_is_p: bool, want_log_pred: bool,
                 grad_dtype: torch.dtype):
    """For a chunk of rows: sum of CE, sum of KL(y~ || y^), the gradient w.r.t. z of the total loss with
    each token weighing ``unit`` (grad_scale / N), in ``grad_dtype``, the bias's own gradient through y^
    (None without ``bias``) and log y^ (None unless ``want_log_pred``).
    ``pred_is_p``: tau = 1 and no bias to take out, so y^ = softmax(z). z and the target logits come in their
    own dtype and are read as float32 here, so that the casts are fused into the pass. No in-place ops:
    torch.compile fuses it."""
    z = z.float()
    log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)
    ce_sum = -log_p.gather(1, y[:, None]).sum()
    p = torch.exp(log_p)
    if pred_is_p:
        log_pred, pred = log_p, p
    else:
        scaled = (z if bias is None else z - bias) / tau
        log_pred = scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)
        pred = torch.exp(log_pred)
    log_target = target_logits[u].float() - target_lse[u][:, None]
    target = torch.exp(log_target)
    kl_sum = (target * (log_target - log_pred)).sum()
    onehot = (torch.arange(z.size(1), device=z.device) == y[:, None]).to(z.dtype)
    pull = alpha * (pred - target)  # (C, V): the augmented term's gradient w.r.t. z
    bias_grad = None if bias is None else -pull.sum(0) * unit
    grad = ((p + pull - onehot) * unit).to(grad_dtype)
    return ce_sum, kl_sum, grad, bias_grad, log_pred if want_log_pred else None


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
        self.chunk_terms = _Compiled(_chunk_terms)


def _target_gradient(target_logits, target_lse, log_pred_sum, inverse, words, rows, emb, alpha, tau, unit):
    """d(unit alpha tau KL) / dL through y~ (``target_grad``; KL summed over the tokens, unit = grad_scale / N):
    with S = rows L^T / tau and, per distinct word, its row count and the sum of its rows' log y^,
    dKL/dS = y~ * (count log y~ - sum log y^ - (count sum y~ log y~ - <y~, sum log y^>)); then through both
    sides of S."""
    log_target = target_logits.float() - target_lse[:, None]
    target = log_target.exp()
    count = torch.bincount(inverse, minlength=words.numel()).float()[:, None]
    c = count[:, 0] * (target * log_target).sum(-1) - (target * log_pred_sum).sum(-1)
    grad_s = target * (count * log_target - log_pred_sum - c[:, None]) * (alpha * unit)  # (alpha tau unit) / tau
    grad_emb = grad_s.t() @ rows  # through the similarity to every word
    return grad_emb.index_add_(0, words, grad_s @ emb)  # through each target word's own row


class _FusedAugmentedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, embedding, bias, alpha, tau, target_grad, centre_target, chunk_elements,
                kernels, grad_scale):
        n, v = logits.shape
        target_logits_fn = kernels.target_logits if kernels is not None else _target_logits
        chunk_terms = kernels.chunk_terms if kernels is not None else _chunk_terms
        # float32 throughout, also under bf16/fp16 autocast (softmax, log and KL need the range), except the
        # target similarity's matmul, which takes the logits' reduced precision (``_target_logits``).
        with torch.autocast(device_type=logits.device.type, enabled=False):
            emb = embedding.detach().float()
            if centre_target:
                emb = emb - emb.mean(0)
            words, inverse = torch.unique(targets, return_inverse=True)  # words: (U,), inverse: (N,)
            rows = emb[words]  # (U, d)
            # Tensors, not floats: a float would be baked into the compiled code and recompiled for every
            # value an alpha or tau schedule takes. torch.full: a fill on the device, not a host copy.
            alpha_t, tau_t, unit = (torch.full((), x, dtype=torch.float32, device=logits.device)
                                    for x in (alpha, tau, grad_scale / n))
            # The similarity's matmul in the logits' dtype where that is a reduced precision (bf16, fp16).
            sim_dtype = logits.dtype if logits.dtype in (torch.bfloat16, torch.float16) else torch.float32
            target_logits, target_lse = target_logits_fn(rows, emb, tau_t, sim_dtype)  # (U, V), (U,)
            shift = None if bias is None else bias.detach().float()
            pred_is_p = tau == 1.0 and shift is None
            chunk = max(1, chunk_elements // v)
            # bfloat16 has float32's range, so the gradient can take the logits' precision here, in one
            # rounding; float16 has not (its loss scaler multiplies the upstream gradient instead).
            grad_dtype = torch.bfloat16 if logits.dtype == torch.bfloat16 else torch.float32
            grad = None if chunk >= n else torch.empty(n, v, dtype=grad_dtype, device=logits.device)
            grad_bias = None if shift is None else torch.zeros(v, dtype=torch.float32, device=logits.device)
            # the sum of log y^ per distinct word, in float32 whatever dtype the target logits keep
            log_pred_sum = target_logits.new_zeros(target_logits.shape, dtype=torch.float32) if target_grad else None
            ce_sum = kl_sum = 0.0
            for start in range(0, n, chunk):
                end = min(start + chunk, n)
                u = inverse[start:end]
                ce_part, kl_part, g, bias_part, log_pred = chunk_terms(
                    logits[start:end], targets[start:end], u, target_logits, target_lse, alpha_t, tau_t,
                    unit, shift, pred_is_p, target_grad, grad_dtype)
                ce_sum = ce_sum + ce_part
                kl_sum = kl_sum + kl_part
                if grad is None:
                    grad = g  # one chunk: the kernel's output is the buffer
                else:
                    grad[start:end] = g
                if shift is not None:
                    grad_bias += bias_part
                if target_grad:
                    log_pred_sum.index_add_(0, u, log_pred)
            grad_emb = None
            if target_grad:
                grad_emb = _target_gradient(target_logits, target_lse, log_pred_sum, inverse, words, rows, emb,
                                            alpha, tau, grad_scale / n)
                if centre_target:  # y~ saw L less its mean row, which every row of L moves
                    grad_emb -= grad_emb.mean(0)
                grad_emb = grad_emb.to(embedding.dtype)
            if grad_bias is not None:
                grad_bias = grad_bias.to(bias.dtype)

        ce, kl = ce_sum / n, kl_sum / n
        ctx.save_for_backward(grad, grad_emb, grad_bias)
        ctx.logits_dtype = logits.dtype
        ctx.grad_scale = grad_scale
        ctx.backward_done = False
        ctx.mark_non_differentiable(ce, kl)
        return ce + alpha * tau * kl, ce, kl

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        if ctx.backward_done:
            raise RuntimeError("the fused augmented loss supports one backward pass per forward (no retain_graph)")
        ctx.backward_done = True
        grad, grad_emb, grad_bias = ctx.saved_tensors
        ratio = grad_total / ctx.grad_scale  # 1 when the caller multiplied the loss by the grad_scale it gave
        # Reading the ratio would make an accelerator wait; there the multiply is cheap, and by 1 exact.
        if ratio.device.type != "cpu" or ratio.item() != 1.0:
            grad.mul_(ratio)  # in place: the buffer is this step's alone, and not allocating another is the point
        grad_logits = grad.to(ctx.logits_dtype)
        grad_embedding = None if grad_emb is None else grad_emb * ratio
        grad_b = None if grad_bias is None else grad_bias * ratio
        return grad_logits, None, grad_embedding, grad_b, None, None, None, None, None, None, None
