import pytest
import torch

from lm.errors import ConfigError, DataError
from lm.lstm import masked_lstm
from lm.model import LockedDropout, LSTMLanguageModel, detach_hidden


def small(**kw):
    return LSTMLanguageModel(vocab_size=50, **{"emb_size": 12, "hidden_size": 12, **kw})


def test_tied_weights_share_storage_and_gradient():
    m = small(tie_weights=True, output_bias=False)
    assert m.decoder.weight is m.embedding.weight
    assert m.decoder.weight.data_ptr() == m.embedding.weight.data_ptr()
    assert m.decoder.bias is None
    # Counted once: embedding + LSTMs, no second V x d matrix.
    untied = small()
    assert untied.num_parameters() - m.num_parameters() == 50 * 12 + 50
    tokens = torch.randint(0, 50, (6, 3))
    logits, _ = m(tokens, m.init_hidden(3))
    logits.sum().backward()
    assert m.embedding.weight.grad is m.decoder.weight.grad


def test_untied_weights_are_separate():
    m = small()
    assert m.decoder.weight.data_ptr() != m.embedding.weight.data_ptr()
    assert m.decoder.bias is not None
    with torch.no_grad():
        m.embedding.weight.zero_()
    assert m.decoder.weight.abs().sum() > 0


def test_tied_keeps_output_bias_when_asked():
    assert small(tie_weights=True, output_bias=True).decoder.bias is not None


def test_tying_mismatched_sizes_is_a_config_error():
    with pytest.raises(ConfigError, match="emb_size == model.hidden_size"):
        LSTMLanguageModel(vocab_size=50, emb_size=12, hidden_size=16, tie_weights=True)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval_is_a_config_error(p):
    with pytest.raises(ConfigError, match="dropout"):
        small(dropout_hidden=p)


def test_locked_dropout_mask_is_constant_over_time():
    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    x = torch.ones(20, 8, 16)
    y = drop(x)
    assert torch.equal(y, y[:1].expand_as(y))  # the same mask at every step
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept units are scaled by 1 / (1 - p)
    assert not torch.equal(y[0, 0], y[0, 1])  # but a different mask per sequence
    assert torch.equal(drop.eval()(x), x)


def test_model_dropout_is_variational_end_to_end():
    """With dropout on, a masked embedding unit stays masked at every step of the sequence."""
    torch.manual_seed(1)
    m = small(dropout_emb=0.5).train()
    seen = {}

    def record_input(module, args, output):
        seen["x"] = args[0].detach()

    m.lstms[0].register_forward_hook(record_input)
    tokens = torch.randint(0, 50, (10, 4))
    m(tokens, m.init_hidden(4))
    zero = seen["x"] == 0
    assert zero.any() and torch.equal(zero, zero[:1].expand_as(zero))


def test_shapes_and_state():
    m = small(num_layers=2)
    tokens = torch.randint(0, 50, (7, 3))
    logits, hidden = m(tokens, m.init_hidden(3))
    assert logits.shape == (7, 3, 50)
    assert len(hidden) == 2 and hidden[0][0].shape == (1, 3, 12)
    detached = detach_hidden(hidden)
    assert all(h.grad_fn is None and c.grad_fn is None for h, c in detached)
    assert torch.equal(detached[1][1], hidden[1][1])


def test_uniform_init_range():
    m = small(init_range=0.05)
    for name, p in m.named_parameters():
        assert p.abs().max() <= 0.05, name


def test_subspace_distance_closed_forms():
    from lm.analysis import subspace_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g)
    mix = torch.randn(4, 4, generator=g)
    assert subspace_distance(a, a @ mix) == pytest.approx(0.0, abs=1e-9)  # same span
    e = torch.eye(50)
    assert subspace_distance(e[:, :4], e[:, 4:8]) == pytest.approx(1.0)  # orthogonal spans
    assert subspace_distance(e[:, :4], e[:, 2:6]) == pytest.approx(0.5)  # half the directions shared


def test_target_spread_closed_form_and_blocks():
    import math

    from lm.analysis import target_spread

    # L = c * I (V = 3): y~ for any word is e^(c^2/tau) on itself and 1 on each other word, over e^(c^2/tau) + 2.
    c, tau = 2.0, 2.0
    z = math.exp(c * c / tau) + 2
    spread = target_spread(c * torch.eye(3), torch.tensor([5, 0, 1]), tau, k=1)
    assert spread["self"] == pytest.approx(math.exp(c * c / tau) / z)
    assert spread["near"] == pytest.approx(1 / z)
    assert spread["entropy"] == pytest.approx(-(math.exp(c * c / tau) / z) * math.log(math.exp(c * c / tau) / z)
                                              - 2 / z * math.log(1 / z))
    # More words than one block, with unequal counts: the same as the dense token-weighted average.
    g = torch.Generator().manual_seed(0)
    emb, counts = torch.randn(1500, 8, generator=g), torch.randint(0, 5, (1500,), generator=g)
    p = torch.softmax(emb @ emb.t() / 0.7, dim=1)
    weights = counts.double() / counts.sum()
    dense_self = (p.diagonal().double() * weights).sum()
    dense_near = ((p - torch.diag(p.diagonal())).topk(10, dim=1).values.sum(1).double() * weights).sum()
    spread = target_spread(emb, counts, 0.7)
    assert spread["self"] == pytest.approx(float(dense_self), rel=1e-5)
    assert spread["near"] == pytest.approx(float(dense_near), rel=1e-5)


def test_target_axis_against_the_logits_it_describes():
    from lm.analysis import target_axis

    # Rows on one line (L[j] = s_j * v): y~ ranks every word by s_j, all of its logits' variance is on that axis.
    s = torch.tensor([1.0, -2.0, 0.5, 3.0])
    got = target_axis(s[:, None] * torch.tensor([[0.6, 0.8, 0.0]]), torch.tensor([1, 1, 1, 1]))
    assert got["logits"] == pytest.approx(1.0) and got["variance"] == pytest.approx(1.0)
    # Rows (+-a, 0) and (0, +-b), a > b: C = diag(a^2, b^2) / 2. A word on the first axis has logits
    # varying by a^2 * a^2 / 2, all on that axis; one on the second by b^2 * b^2 / 2, none on it.
    a, b = 2.0, 1.0
    got = target_axis(torch.tensor([[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]]), torch.tensor([3, 0, 1, 0]))
    assert got["variance"] == pytest.approx(a**2 / (a**2 + b**2))
    assert got["logits"] == pytest.approx(3 * a**4 / (3 * a**4 + b**4))
    # Random L: the same as the variances of the (V, V) logits themselves, split by projecting L on the axis.
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 6, generator=g) * torch.tensor([3.0, 1.0, 1.0, 0.5, 0.5, 0.2])
    counts = torch.randint(0, 5, (300,), generator=g)
    logits = emb.double() @ emb.double().t()  # row w: y~'s logits for w, times tau
    centred = emb.double() - emb.double().mean(0)
    axis = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    on_axis = torch.outer(emb.double() @ axis, emb.double() @ axis)
    weights = counts.double() / counts.sum()
    expected = float((weights * on_axis.var(1, correction=0)).sum() / (weights * logits.var(1, correction=0)).sum())
    got = target_axis(emb, counts)
    assert got["logits"] == pytest.approx(expected, rel=1e-9)
    assert got["logits"] > 0.5  # the planted long axis (scale 3) carries most of it
    assert got["frequency"] == pytest.approx(
        abs(float(torch.corrcoef(torch.stack([emb.double() @ axis, counts.double().log1p()]))[0, 1])), rel=1e-9)


def test_tempered_losses_closed_form():
    import math

    from lm.analysis import tempered_losses

    # Logits (a, 0, 0, 0): softmax(z / T) gives e^(a/T) / (e^(a/T) + 3) to word 0 and 1 / (e^(a/T) + 3) to the others.
    a = 2.0
    logits = torch.tensor([[a, 0.0, 0.0, 0.0], [a, 0.0, 0.0, 0.0]])
    ce, entropy = tempered_losses(logits, torch.tensor([0, 1]), [1.0, 2.0])
    for t, got in zip((1.0, 2.0), ce.tolist()):
        z = math.exp(a / t) + 3
        assert got == pytest.approx((math.log(z) - a / t) + math.log(z))
    p0, q = math.exp(a) / (math.exp(a) + 3), 1 / (math.exp(a) + 3)
    assert entropy == pytest.approx(2 * (-p0 * math.log(p0) - 3 * q * math.log(q)))


def test_calibration_reads_a_text_as_one_pass_over_parallel_streams():
    from lm.analysis import calibration
    from lm.data import batchify

    torch.manual_seed(0)
    m = small(init_range=0.5).eval()
    ids = torch.randint(0, 50, (103,))
    got = calibration(m, ids, [2.0, 0.5], streams=3, bptt=4)
    # The same as one forward pass over the whole streams: windows carry the state exactly.
    data = batchify(ids, 3)
    with torch.no_grad():
        logits = m(data[:-1], m.init_hidden(3))[0].reshape(-1, 50)
    targets = data[1:].reshape(-1)
    assert got["tokens"] == targets.numel() == 33 * 3
    for t in (0.5, 1.0, 2.0):
        expected = torch.nn.functional.cross_entropy(logits / t, targets).exp()
        assert got["perplexity"][t] == pytest.approx(float(expected), rel=1e-5)
    assert got["cross_entropy"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-5)
    p = torch.softmax(logits, dim=1)
    assert got["entropy"] == pytest.approx(float(-(p * p.log()).sum(1).mean()), rel=1e-5)
    with pytest.raises(DataError, match="too few for 3 streams"):
        calibration(m, ids[:4], [1.0], streams=3)


@pytest.mark.parametrize("tie_weights", [False, True])
def test_augmented_pull_compares_the_two_terms_gradients_on_the_top_layer(tie_weights):
    from lm.analysis import augmented_pull
    from lm.data import batchify
    from lm.losses import augmented_loss

    torch.manual_seed(0)
    m = small(init_range=0.5, tie_weights=tie_weights).eval()
    ids = torch.randint(0, 50, (103,))
    got = augmented_pull(m, ids, alpha=0.7, tau=3.0, streams=3, bptt=4)
    # Autograd through the training loss, on the classifier's input over one pass of the whole streams.
    tops = []
    m.decoder.register_forward_pre_hook(lambda module, args: tops.append(args[0].detach().requires_grad_()) or (tops[-1],))
    data = batchify(ids, 3)
    logits = m(data[:-1], m.init_hidden(3))[0].reshape(-1, 50)
    targets = data[1:].reshape(-1)
    ce = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, targets), tops[0], retain_graph=True)[0]
    total = augmented_loss(logits, targets, m.embedding.weight, 0.7, 3.0).total
    aug = torch.autograd.grad(total, tops[0])[0] - ce
    assert got["ratio"] == pytest.approx(float(aug.norm() / ce.norm()), rel=1e-4)
    assert got["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(aug.flatten(), ce.flatten(), 0)),
                                          rel=1e-4, abs=1e-5)
    assert augmented_pull(m, ids, alpha=0.0, tau=3.0, streams=3, bptt=4)["ratio"] == 0.0


def test_word_dropout_drops_a_word_at_every_occurrence():
    torch.manual_seed(2)
    m = small(dropout_words=0.5).train()
    tokens = torch.randint(0, 10, (12, 5))  # 10 distinct words, each seen many times
    x = m.embed(tokens)
    scale = (x / m.embedding(tokens)).detach()  # per token: 0 (dropped) or 1 / (1 - p) on every unit
    for word in tokens.unique():
        at = scale[tokens == word]
        assert torch.allclose(at, at[:1].expand_as(at))  # one decision per word for the whole batch
    assert set(scale[..., 0].unique().tolist()) == {0.0, 2.0}
    # A dropped word gets no gradient from this batch; a kept one does, scaled by 1 / (1 - p).
    x.sum().backward()
    dropped = tokens[scale[..., 0] == 0].unique()
    kept = tokens[scale[..., 0] == 2].unique()
    g = m.embedding.weight.grad
    assert g[dropped].abs().sum() == 0
    counts = torch.bincount(tokens.flatten(), minlength=50)
    assert torch.allclose(g[kept], 2.0 * counts[kept, None].float().expand(-1, 12))
    assert torch.equal(m.eval().embed(tokens), m.embedding(tokens))


def _lstm_by_hand(x, state, w_ih, w_hh, b_ih, b_hh):
    """The LSTM recurrence written out (PyTorch's gate order i, f, g, o), one step at a time."""
    h, c = state[0][0], state[1][0]
    out = []
    for x_t in x:
        i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def test_recurrent_dropout_uses_one_mask_on_w_hh_for_the_whole_window():
    torch.manual_seed(3)
    p = 0.4
    m = small(num_layers=1, dropout_recurrent=p).train()
    lstm = m.lstms[0]
    x = torch.randn(15, 4, 12)
    state = (torch.randn(1, 4, 12), torch.randn(1, 4, 12))
    out, _ = m.run_layer(lstm, x, state)
    out.sum().backward()
    # The dropped connections are the entries of W_hh whose gradient is exactly zero.
    kept = lstm.weight_hh_l0.grad != 0
    assert 0.3 < 1 - kept.float().mean() < 0.5
    assert lstm.weight_ih_l0.grad.ne(0).all()  # input weights are not dropped
    # The window's output is the LSTM run with W_hh * mask / (1 - p) at every step.
    with torch.no_grad():
        w_hh = lstm.weight_hh_l0 * kept / (1 - p)
        by_hand = _lstm_by_hand(x, state, lstm.weight_ih_l0, w_hh, lstm.bias_ih_l0, lstm.bias_hh_l0)
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-6)
    assert isinstance(lstm.weight_hh_l0, torch.nn.Parameter)  # the optimizer still steps the original


def test_recurrent_dropout_draws_a_new_mask_per_batch_and_none_in_eval():
    torch.manual_seed(4)
    m = small(dropout_recurrent=0.5)
    plain = small()
    plain.load_state_dict(m.state_dict())
    tokens = torch.randint(0, 50, (8, 3))
    m.train()
    a, _ = m(tokens, m.init_hidden(3))
    b, _ = m(tokens, m.init_hidden(3))
    assert not torch.allclose(a, b)
    m.eval()
    plain.eval()
    torch.testing.assert_close(m(tokens, m.init_hidden(3))[0], plain(tokens, plain.init_hidden(3))[0])


def _state_dropout_by_cell(x, h, c, mask, lstm):
    """The paper's dropout written step by step with nn.LSTMCell: h_t * mask feeds the next step and leaves the layer."""
    cell = torch.nn.LSTMCell(lstm.input_size, lstm.hidden_size)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in lstm.state_dict().items()})
    outputs = []
    for t in range(x.size(0)):
        h, c = cell(x[t], (h * mask, c))
        outputs.append(h * mask)
    return torch.stack(outputs), h, c, cell


def test_state_dropout_with_a_mask_of_ones_is_nn_lstm():
    torch.manual_seed(5)
    lstm = torch.nn.LSTM(12, 16)
    x, h, c = torch.randn(9, 4, 12), torch.randn(4, 16), torch.randn(4, 16)
    out, h_n, c_n = masked_lstm(x, h, c, torch.ones(4, 16), 0.0, *lstm.parameters())
    expected, (h_ref, c_ref) = lstm(x, (h[None], c[None]))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((h_n, c_n), (h_ref[0], c_ref[0]), rtol=1e-5, atol=1e-6)
    # Through the model: a rate too small to drop anything takes masked_lstm and matches the nn.LSTM path.
    looped, plain = small(dropout_state=1e-9).train(), small().train()
    plain.load_state_dict(looped.state_dict())
    tokens = torch.randint(0, 50, (8, 3))
    a, hidden_a = looped(tokens, looped.init_hidden(3))
    b, hidden_b = plain(tokens, plain.init_hidden(3))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden_a, hidden_b, rtol=1e-5, atol=1e-6)


# A one-step window: its one step is the last, which nothing shuts, fed by the carried state. A batch wider
# than the layer: the mask's input columns (one per sequence) outnumber the units.
@pytest.mark.parametrize("steps, batch", [(7, 4), (1, 4), (5, 24)])
def test_state_dropout_outputs_and_gradients_match_a_step_by_step_reference(steps, batch):
    torch.manual_seed(6)
    lstm = torch.nn.LSTM(12, 16)
    x = torch.randn(steps, batch, 12, requires_grad=True)
    h, c = torch.randn(batch, 16, requires_grad=True), torch.randn(batch, 16, requires_grad=True)
    keep = torch.empty(batch, 16).bernoulli_(0.6)
    out, h_n, c_n = masked_lstm(x, h, c, keep, 0.4, *lstm.parameters())
    ref, h_ref, c_ref, cell = _state_dropout_by_cell(x, h, c, keep / 0.6, lstm)
    torch.testing.assert_close((out, h_n, c_n), (ref, h_ref, c_ref), rtol=1e-5, atol=1e-6)
    # The final state leaves unmasked: the next window applies its own mask where it is used.
    assert (h_n == 0).float().mean() < 0.01 < (out[-1] == 0).float().mean()
    upstream = [torch.randn_like(t) for t in (out, h_n, c_n)]  # a loss on every output, not a plain sum
    ours = torch.autograd.grad((out, h_n, c_n), (x, h, c, *lstm.parameters()), upstream)
    theirs = torch.autograd.grad((ref, h_ref, c_ref), (x, h, c, *cell.parameters()), upstream)
    for name, a, b in zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_state_dropout_backward_passes_gradcheck():
    # Finite differences in float64 for every input, the final (h, c) included.
    g = torch.Generator().manual_seed(8)
    steps, batch, d, n = 5, 3, 4, 6

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    keep = (torch.rand(batch, n, generator=g, dtype=torch.float64) > 0.3).double()
    args = (rand(steps, batch, d), rand(batch, n), rand(batch, n), keep, 0.3, rand(4 * n, d), rand(4 * n, n),
            rand(4 * n), rand(4 * n))
    assert torch.autograd.gradcheck(masked_lstm, args)


def test_state_dropout_keeps_one_mask_for_every_step_of_a_window_and_none_in_eval():
    torch.manual_seed(7)
    m = small(dropout_state=0.5).train()
    seen = []
    m.decoder.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    tokens = torch.randint(0, 50, (10, 6))
    m(tokens, m.init_hidden(6))
    dropped = seen[0] == 0  # (T, B, H): the classifier's input is the top layer's masked h_t
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # the same units at every step ...
    assert 0.3 < dropped[0].float().mean() < 0.7
    assert not torch.equal(dropped[0, 0], dropped[0, 1])  # ... and a mask per sequence
    m(tokens, m.init_hidden(6))
    assert not torch.equal(seen[1] == 0, dropped)  # a new draw for the next window
    m.eval()
    plain = small().eval()
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(tokens, m.init_hidden(6))[0], plain(tokens, plain.init_hidden(6))[0])


def test_state_and_recurrent_dropout_together_is_a_config_error():
    with pytest.raises(ConfigError, match="dropout_state and model.dropout_recurrent"):
        small(dropout_state=0.3, dropout_recurrent=0.2)


@pytest.mark.parametrize("dropout_state", [0.0, 0.3])  # nn.LSTM; masked_lstm
def test_recurrent_layers_run_in_float32_under_autocast_and_take_a_state_of_another_precision(dropout_state,
                                                                                           monkeypatch):
    import lm.model

    seen = []
    m = small(dropout_state=dropout_state).train()
    for lstm in m.lstms:
        lstm.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[1][0].dtype)))
    masked = lm.model.masked_lstm

    def recording(x, h, c, *rest):
        seen.append((x.dtype, h.dtype))
        return masked(x, h, c, *rest)

    monkeypatch.setattr(lm.model, "masked_lstm", recording)
    tokens = torch.randint(0, 50, (6, 3))
    hidden = [(h.bfloat16(), c.bfloat16()) for h, c in m.init_hidden(3)]  # as a run saved under bf16 left it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, new_hidden = m(tokens, hidden)
    assert seen == [(torch.float32, torch.float32)] * 2  # both layers, whichever path
    assert all(h.dtype == c.dtype == torch.float32 for h, c in new_hidden)  # the carried state stays float32
    assert logits.dtype == torch.bfloat16  # the classifier keeps autocast
