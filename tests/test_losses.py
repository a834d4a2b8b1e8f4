"""The augmented loss against autograd and closed forms."""

import pytest
import torch
import torch.nn.functional as F

from lm.errors import ConfigError
from lm.losses import AugmentedLoss, CrossEntropyLoss, _target_logits

V, D, N = 30, 8, 12


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, V, (N,), generator=g)
    embedding = torch.randn(V, D, generator=g, dtype=torch.float64)
    return logits, targets, embedding


def test_alpha_zero_equals_cross_entropy(inputs):
    z, y, L = inputs
    al = AugmentedLoss()(z, y, L, alpha=0.0, tau=0.5)
    ce = CrossEntropyLoss()(z, y, L)
    assert torch.allclose(al.total, ce.total) and torch.allclose(al.ce, ce.ce)
    assert torch.allclose(ce.total, F.cross_entropy(z.float(), y))


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_kl_is_nonnegative_and_matches_definition(inputs, tau):
    z, y, L = inputs
    out = AugmentedLoss()(z, y, L, alpha=1.0, tau=tau)
    target = torch.softmax(L[y] @ L.t() / tau, dim=-1)
    pred = torch.softmax(z / tau, dim=-1)
    kl_rows = (target * (target.log() - pred.log())).sum(-1)
    assert (kl_rows >= 0).all()
    assert torch.allclose(out.kl.double(), kl_rows.mean(), rtol=1e-5)
    assert torch.allclose(out.total.double(), out.ce.double() + 1.0 * tau * kl_rows.mean(), rtol=1e-5)


def test_kl_is_zero_when_prediction_equals_target(inputs):
    _, y, L = inputs
    tau = 0.8
    z = (L[y] @ L.t()) + 3.0  # z / tau = target logits / tau, shifted: same softmax
    out = AugmentedLoss()(z, y, L, alpha=1.0, tau=tau)
    assert abs(out.kl.item()) < 1e-6


@pytest.mark.parametrize("tau,alpha", [(1.0, 0.5), (0.4, 1.0), (3.0, 0.2)])
def test_logit_gradient_matches_closed_form(inputs, tau, alpha):
    z, y, L = inputs
    z = z.clone().requires_grad_(True)
    out = AugmentedLoss()(z, y, L, alpha=alpha, tau=tau)
    (grad,) = torch.autograd.grad(out.total, z)
    target = torch.softmax(L[y] @ L.t() / tau, dim=-1)
    expected = torch.softmax(z, -1) - F.one_hot(y, V) + alpha * (torch.softmax(z / tau, -1) - target)
    assert torch.allclose(grad.double() * N, expected.detach(), atol=1e-5)


def _kl_grad_through_target(z, y, L, tau):
    """d/dL of sum_t KL(y~_t || y^_t) through y~ only (y^ held fixed), by hand."""
    s = L[y] @ L.t() / tau  # (N, V)
    p = torch.softmax(s, -1)
    a = torch.log(p) - torch.log_softmax(z / tau, -1)
    gs = p * (a - (p * a).sum(-1, keepdim=True))  # dKL/ds through the softmax
    grad = gs.t() @ L[y] / tau  # via the similarity to every word (the L^T side)
    grad.index_add_(0, y, gs @ L / tau)  # via the target word's own row u = L[y*]
    return grad


def test_target_gradient_option_changes_embedding_gradient_as_expected(inputs):
    z, y, L = inputs
    tau, alpha = 0.7, 0.6
    emb = L.clone().requires_grad_(True)
    fixed = AugmentedLoss()(z, y, emb, alpha=alpha, tau=tau)
    (grad,) = torch.autograd.grad(fixed.total, emb, allow_unused=True, materialize_grads=True)
    assert torch.equal(grad, torch.zeros_like(L))  # by default the target is a constant: nothing flows into L
    emb = L.clone().requires_grad_(True)
    out = AugmentedLoss(target_grad=True)(z, y, emb, alpha=alpha, tau=tau)
    (grad,) = torch.autograd.grad(out.total, emb)
    expected = alpha * tau * _kl_grad_through_target(z, y, L, tau) / N
    assert torch.allclose(grad.double(), expected, atol=1e-6)
    assert expected.abs().max() > 1e-3


def test_loss_is_float32_under_bf16_inputs(inputs):
    z, y, L = inputs
    out = AugmentedLoss()(z.bfloat16(), y, L.bfloat16(), alpha=0.5, tau=0.5)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)


def test_bf16_logits_lower_the_precision_of_the_target_similarity_alone(inputs):
    # The same logit values in bf16 and in float64: cross-entropy reads them in float32 either way, and the
    # KL moves by bf16's rounding of the similarity, which runs in the logits' dtype.
    z, y, L = inputs
    low = AugmentedLoss()(z.bfloat16(), y, L, alpha=0.5, tau=2.0)
    high = AugmentedLoss()(z.bfloat16().double(), y, L, alpha=0.5, tau=2.0)
    assert torch.equal(low.ce, high.ce)
    assert torch.allclose(low.kl, high.kl, rtol=1e-2) and not torch.equal(low.kl, high.kl)


def test_target_similarity_stays_in_the_dtype_its_matmul_rounded_it_to():
    # Under bf16 the (U, V) target logits are kept as the matmul's bf16 output, half the memory of a float32
    # copy holding the same values; the kernel reads them as float32. Their log-sum-exp is float32.
    torch.manual_seed(0)
    rows, emb, tau = torch.randn(7, 16), torch.randn(50, 16), torch.tensor(2.0)
    s, lse = _target_logits(rows, emb, tau, torch.bfloat16)
    expected = (rows / tau).bfloat16() @ emb.bfloat16().t()
    assert s.dtype == torch.bfloat16 and torch.equal(s, expected)
    assert lse.dtype == torch.float32 and torch.allclose(lse, torch.logsumexp(expected.float(), dim=-1))
    s32, lse32 = _target_logits(rows, emb, tau, torch.float32)
    assert s32.dtype == torch.float32 and torch.allclose(lse32, torch.logsumexp(rows / tau @ emb.t(), dim=-1))


@pytest.mark.parametrize("compile", [False, True])
def test_fp16_logits_match_the_reference_with_an_fp16_similarity(inputs, compile):
    # fp16 logits (a GPU's 16-mixed): the similarity runs and stays in fp16, the gradient in float32.
    z, y, L = inputs
    fused, reference = z.half().requires_grad_(), z.half().requires_grad_()
    out = AugmentedLoss(compile=compile)(fused, y, L.float(), alpha=0.5, tau=2.0)
    expected = reference_augmented(reference, y, L.float(), 0.5, 2.0, False, sim_dtype=torch.float16)
    (out.total * 3.0).backward()
    (expected * 3.0).backward()
    assert torch.allclose(out.total, expected, rtol=1e-6)
    assert fused.grad.dtype == torch.float16 and torch.allclose(fused.grad, reference.grad, atol=1e-6)


def test_bad_compile_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.compile"):
        AugmentedLoss(compile="yes")


def reference_augmented(logits, targets, embedding, alpha, tau, target_grad, bias=None, centre_target=False,
                        sim_dtype=torch.float32):
    """The straightforward formulation, autograd through every intermediate; ``bias`` is taken out of y^;
    the similarity's matmul in ``sim_dtype``."""
    z = logits.float()
    emb = embedding.float() if target_grad else embedding.float().detach()
    if centre_target:
        emb = emb - emb.mean(0)
    log_target = F.log_softmax(((emb[targets] / tau).to(sim_dtype) @ emb.to(sim_dtype).t()).float(), dim=-1)
    log_pred = F.log_softmax((z if bias is None else z - bias.float()) / tau, dim=-1)
    kl = F.kl_div(log_pred, log_target, log_target=True, reduction="batchmean")
    return F.cross_entropy(z, targets) + alpha * tau * kl


def _model_grads(loss_fn, tied, seed=0, autocast=False, loss_in_autocast=True, upstream=1.0, output_bias=None):
    """The loss and every parameter's gradient of a small model; ``loss_fn(z, y, L, b)``, b the output bias
    (by default untied models have one and tied ones do not)."""
    from lm.model import LSTMLanguageModel

    torch.manual_seed(seed)
    output_bias = not tied if output_bias is None else output_bias
    model = LSTMLanguageModel(vocab_size=V, emb_size=D, hidden_size=D, tie_weights=tied, output_bias=output_bias)
    if output_bias:
        torch.nn.init.uniform_(model.decoder.bias, -1.0, 1.0)  # a bias far from 0, so that taking it out shows
    tokens = torch.randint(0, V, (7, 4), generator=torch.Generator().manual_seed(seed))
    targets = torch.randint(0, V, (7 * 4,), generator=torch.Generator().manual_seed(seed + 1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, _ = model(tokens, model.init_hidden(4))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast and loss_in_autocast):
            loss = loss_fn(logits.view(-1, V), targets, model.embedding.weight, model.decoder.bias)
    (loss * upstream).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("target_grad", [False, True])
@pytest.mark.parametrize("chunk_elements", [1 << 23, 3 * V])  # one chunk; chunks of 3 rows
@pytest.mark.parametrize("tau", [1.0, 0.8])  # tau = 1 takes its own path
@pytest.mark.parametrize("compiled", [False, True])  # eager in-place code; the torch.compile kernel
def test_fused_matches_straightforward_loss_and_every_parameter_gradient(tied, target_grad, chunk_elements, tau,
                                                                         compiled):
    alpha = 0.6
    fused = AugmentedLoss(target_grad=target_grad, chunk_elements=chunk_elements, compile=compiled)
    loss_f, grads_f = _model_grads(lambda z, y, L, b: fused(z, y, L, alpha, tau).total, tied)
    loss_r, grads_r = _model_grads(lambda z, y, L, b: reference_augmented(z, y, L, alpha, tau, target_grad), tied)
    assert torch.allclose(loss_f, loss_r, rtol=1e-5)
    for name in grads_r:
        assert torch.allclose(grads_f[name], grads_r[name], rtol=1e-5, atol=1e-7), name


# Every combination eagerly; the compiled kernel (a compile per combination) on three that cover each option.
_OPTION_CASES = [(tied, pred_bias, centre, target_grad, tau, False)
                 for tied in (False, True) for pred_bias in (True, False) for centre in (False, True)
                 for target_grad in (False, True) for tau in (1.0, 0.8)]
_OPTION_CASES += [(True, False, True, True, 0.8, True), (False, False, False, False, 1.0, True),
                  (True, True, True, False, 0.8, True)]


@pytest.mark.parametrize("tied, pred_bias, centre_target, target_grad, tau, compiled", _OPTION_CASES)
def test_bias_and_centred_target_options_match_autograd_for_every_parameter(tied, pred_bias, centre_target,
                                                                            target_grad, tau, compiled):
    chunk_elements = 3 * V if tau != 1.0 else 1 << 23  # row chunks, or one chunk
    # Models with an output bias, tied or not: the bias is in z, and in y^ only with pred_bias.
    alpha = 0.6
    fused = AugmentedLoss(target_grad=target_grad, chunk_elements=chunk_elements, compile=compiled,
                          pred_bias=pred_bias, centre_target=centre_target)
    loss_f, grads_f = _model_grads(lambda z, y, L, b: fused(z, y, L, alpha, tau, bias=b).total, tied,
                                   output_bias=True)
    loss_r, grads_r = _model_grads(
        lambda z, y, L, b: reference_augmented(z, y, L, alpha, tau, target_grad, bias=None if pred_bias else b,
                                               centre_target=centre_target), tied, output_bias=True)
    assert torch.allclose(loss_f, loss_r, rtol=1e-5)
    for name in grads_r:
        assert torch.allclose(grads_f[name], grads_r[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("pred_bias", [True, False])
def test_bias_gradient_matches_closed_form(inputs, pred_bias):
    # z = h + b: with b in y^, b gets the whole logit gradient summed over rows; taken out of y^, the
    # augmented term's pull on z is undone for b, which is left with cross-entropy's sum(softmax(z) - onehot).
    h, y, L = inputs
    tau, alpha = 0.5, 0.7
    b = torch.linspace(-2, 2, V, dtype=torch.float64).requires_grad_(True)
    h = h.clone().requires_grad_(True)
    out = AugmentedLoss(pred_bias=pred_bias)(h + b, y, L, alpha=alpha, tau=tau, bias=b)
    grad_h, grad_b = torch.autograd.grad(out.total, (h, b))
    z = (h + b).detach()
    target = torch.softmax(L[y] @ L.t() / tau, dim=-1)
    pred = torch.softmax((z if pred_bias else z - b.detach()) / tau, -1)
    ce_part = torch.softmax(z, -1) - F.one_hot(y, V)
    assert torch.allclose(grad_h * N, ce_part + alpha * (pred - target), atol=1e-6)
    expected_b = ce_part.sum(0) + (alpha * (pred - target)).sum(0) if pred_bias else ce_part.sum(0)
    assert torch.allclose(grad_b * N, expected_b, atol=1e-6)


def test_pred_bias_false_takes_the_bias_out_of_the_prediction(inputs):
    h, y, L = inputs
    b = torch.linspace(-3, 3, V, dtype=torch.float64)
    without = AugmentedLoss(pred_bias=False)(h + b, y, L, alpha=0.5, tau=2.0, bias=b)
    assert torch.allclose(without.kl, AugmentedLoss()(h, y, L, alpha=0.5, tau=2.0).kl)  # KL sees h alone
    assert torch.allclose(without.ce, AugmentedLoss()(h + b, y, L, alpha=0.5, tau=2.0).ce)  # CE sees h + b
    assert not torch.allclose(without.kl, AugmentedLoss()(h + b, y, L, alpha=0.5, tau=2.0, bias=b).kl)


def test_centred_target_ignores_a_direction_shared_by_every_word(inputs):
    # y~ = softmax((L - m)(L[y*] - m) / tau): a vector added to every row of L leaves it unchanged,
    # while the uncentred target moves.
    z, y, L = inputs
    shared = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 5
    centred = AugmentedLoss(centre_target=True)
    assert torch.allclose(centred(z, y, L + shared, 0.5, 2.0).kl, centred(z, y, L, 0.5, 2.0).kl)
    lc = L - L.mean(0)
    target = torch.softmax(lc[y] @ lc.t() / 2.0, -1)
    log_pred = torch.log_softmax(z / 2.0, -1)
    assert torch.allclose(centred(z, y, L, 0.5, 2.0).kl.double(), (target * (target.log() - log_pred)).sum(-1).mean(),
                          rtol=1e-5)
    plain = AugmentedLoss()
    assert not torch.allclose(plain(z, y, L + shared, 0.5, 2.0).kl, plain(z, y, L, 0.5, 2.0).kl)


@pytest.mark.parametrize("target_grad, compiled", [(False, False), (True, False), (False, True)])
def test_fused_matches_straightforward_under_bf16_autocast(target_grad, compiled):
    alpha, tau = 0.5, 1.3
    fused = AugmentedLoss(target_grad=target_grad, compile=compiled)
    loss_f, grads_f = _model_grads(lambda z, y, L, b: fused(z, y, L, alpha, tau).total, True, autocast=True)
    # The fused loss keeps float32 by itself except for the similarity's matmul, which takes the logits'
    # bf16; the reference, computed outside autocast, does the same explicitly.
    loss_r, grads_r = _model_grads(
        lambda z, y, L, b: reference_augmented(z, y, L, alpha, tau, target_grad, sim_dtype=torch.bfloat16), True,
        autocast=True, loss_in_autocast=False)
    assert loss_f.dtype == torch.float32
    assert torch.allclose(loss_f, loss_r, rtol=1e-5)
    for name in grads_r:
        assert torch.allclose(grads_f[name], grads_r[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("target_grad, compiled", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("grad_scale", [35.0, 1.0, 5.0])  # as training announces it; not announced; announced wrong
def test_fused_gradient_scales_with_the_upstream_gradient(target_grad, compiled, grad_scale):
    # Training multiplies the loss by the window length (optim.sum_over_time): backward gets 35, not 1.
    alpha, tau, upstream = 0.6, 2.0, 35.0
    fused = AugmentedLoss(target_grad=target_grad, compile=compiled)
    _, grads_f = _model_grads(lambda z, y, L, b: fused(z, y, L, alpha, tau, grad_scale=grad_scale).total, True,
                              upstream=upstream)
    _, grads_r = _model_grads(lambda z, y, L, b: reference_augmented(z, y, L, alpha, tau, target_grad), True,
                              upstream=upstream)
    _, grads_1 = _model_grads(lambda z, y, L, b: reference_augmented(z, y, L, alpha, tau, target_grad), True)
    for name in grads_r:
        assert torch.allclose(grads_f[name], grads_r[name], rtol=1e-5, atol=1e-6), name
        assert not torch.allclose(grads_f[name], grads_1[name], rtol=1e-3), name  # the scale is not lost


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_bf16_gradient_is_rounded_once_when_the_upstream_gradient_is_announced(compiled):
    # Under bf16 the fused loss keeps its logit gradient in bf16. Formed for the upstream factor training
    # announces (grad_scale), it is the reference's float32 gradient rounded once: every parameter's gradient
    # is the reference's exactly. Scaled afterwards, it is rounded twice: close, but not the same.
    alpha, tau, upstream = 0.5, 1.3, 35.0
    _, grads_r = _model_grads(
        lambda z, y, L, b: reference_augmented(z, y, L, alpha, tau, False, sim_dtype=torch.bfloat16), True,
        autocast=True, loss_in_autocast=False, upstream=upstream)
    grads = {}
    for grad_scale in (upstream, 1.0):
        fused = AugmentedLoss(compile=compiled)
        _, grads[grad_scale] = _model_grads(
            lambda z, y, L, b: fused(z, y, L, alpha, tau, grad_scale=grad_scale).total, True, autocast=True,
            upstream=upstream)
    for name, g in grads_r.items():
        assert torch.equal(grads[upstream][name], g), name
        assert (grads[1.0][name] - g).abs().max() <= 0.02 * g.abs().max(), name
    assert not all(torch.equal(grads[1.0][name], g) for name, g in grads_r.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_multiplies_the_logit_gradient_only_when_the_upstream_gradient_was_not_announced(inputs, dtype):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Writes(TorchDispatchMode):  # the ops that write an (N, V) tensor
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.shape == (N, V):
                self.ops.append(func.overloadpacket.__name__)
            return out

    y, L = inputs[1], inputs[2].float()
    for grad_scale, multiplies in ((35.0, False), (1.0, True)):
        z = inputs[0].to(dtype).requires_grad_()
        out = AugmentedLoss(compile=False)(z, y, L, alpha=0.5, tau=2.0, grad_scale=grad_scale)
        with Writes() as spy:
            (out.total * 35.0).backward()
        assert ("mul_" in spy.ops) == multiplies, spy.ops
        assert z.grad.dtype == dtype


def test_compile_auto_compiles_from_the_vocabulary_threshold_and_each_loss_falls_back_on_its_own(monkeypatch,
                                                                                                 caplog):
    import lm.losses as losses

    calls = []
    real_compile = torch.compile

    def compile_failing_for(fn, **kw):  # a backend that fails at the first call of what it compiled
        calls.append(fn.__name__)
        if len(calls) <= 2:
            def broken(*args):
                raise RuntimeError("no C++ compiler")
            return broken
        return real_compile(fn, **kw)

    monkeypatch.setattr(torch, "compile", compile_failing_for)
    g = torch.Generator().manual_seed(4)
    small_v, big_v = losses.COMPILE_MIN_VOCAB - 1, losses.COMPILE_MIN_VOCAB
    for v in (small_v, big_v):
        z, y, L = torch.randn(6, v, generator=g), torch.randint(0, v, (6,), generator=g), torch.randn(v, 4, generator=g)
        eager = AugmentedLoss(compile=False)(z, y, L, alpha=0.5, tau=2.0)
        first = AugmentedLoss(compile="auto")
        out = first(z, y, L, alpha=0.5, tau=2.0)
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
        if v == small_v:
            assert calls == []  # below the threshold: eager, nothing compiled
    assert calls == ["_target_logits", "_chunk_terms"] and first.kernels.target_logits.failed
    assert "torch.compile of _target_logits failed" in caplog.text
    # Another loss in the same process still compiles: the fallback belonged to the first one.
    second = AugmentedLoss(compile=True)
    torch.testing.assert_close(second(z, y, L, alpha=0.5, tau=2.0), eager, rtol=1e-5, atol=1e-6)
    assert not second.kernels.chunk_terms.failed and calls[2:] == ["_target_logits", "_chunk_terms"]


def test_fused_loss_leaves_its_inputs_alone(inputs):
    z, y, L = inputs[0].float(), inputs[1], inputs[2].float()
    z_before = z.clone()
    AugmentedLoss()(z, y, L, alpha=0.5, tau=0.5)
    assert torch.equal(z, z_before)


def test_compiled_kernel_is_really_compiled_and_not_recompiled_per_alpha():
    g = torch.Generator().manual_seed(3)
    z, y, L = torch.randn(N, V, generator=g), torch.randint(0, V, (N,), generator=g), torch.randn(V, D, generator=g)
    loss = AugmentedLoss(compile=True)
    loss(z, y, L, alpha=0.1, tau=1.0)
    assert loss.kernels.chunk_terms.compiled is not None and not loss.kernels.chunk_terms.failed
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames_before > 0
    for alpha in (0.2, 0.3, 0.4):  # an alpha schedule changes alpha every step
        loss(z, y, L, alpha=alpha, tau=1.0)
    loss(z, y, L, alpha=0.5, tau=0.7)  # tau != 1: the second kernel, compiled once
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for tau in (0.8, 0.9, 1.3):  # ... and a tau schedule changes tau
        out = loss(z, y, L, alpha=0.5, tau=tau)
        assert torch.allclose(out.total, AugmentedLoss(compile=False)(z, y, L, alpha=0.5, tau=tau).total, rtol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_before


def test_fixed_target_uses_the_embedding_copied_every_k_steps():
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(N, V, generator=g), torch.randint(0, V, (N,), generator=g)
    embeddings = [torch.randn(V, D, generator=g) for _ in range(5)]  # the embedding moves every step
    fixed = AugmentedLoss(target_refresh=3)
    moving = AugmentedLoss()
    for step, emb in enumerate(embeddings):
        copied_at = step - step % 3
        expected = moving(z, y, embeddings[copied_at], alpha=0.5, tau=0.7)
        got = fixed(z, y, emb, alpha=0.5, tau=0.7, step=step)
        assert torch.equal(got.kl, expected.kl), step
    assert fixed.target_snapshot.data_ptr() != embeddings[3].data_ptr()  # a copy, not the live tensor
    assert torch.equal(AugmentedLoss(target_refresh=1)(z, y, embeddings[2], 0.5, 0.7, step=2).kl,
                       moving(z, y, embeddings[2], alpha=0.5, tau=0.7).kl)  # K = 1 is the paper's loss


@pytest.mark.parametrize("kw", [{"target_refresh": 0}, {"target_refresh": 2, "target_grad": True}])
def test_bad_fixed_target_settings_are_config_errors(kw):
    with pytest.raises(ConfigError, match="target_refresh"):
        AugmentedLoss(**kw)


@pytest.mark.parametrize("kw", [{"pred_bias": "yes"}, {"centre_target": 1}])
def test_bias_options_that_are_not_booleans_are_config_errors(kw):
    with pytest.raises(ConfigError, match=f"loss.{next(iter(kw))} must be true or false"):
        AugmentedLoss(**kw)
