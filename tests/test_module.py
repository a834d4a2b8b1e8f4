"""The Lightning task: LSTM state across windows, exact perplexity, optimiser schedule, logged values."""

import math

import pytest
import torch

from helpers import NO_DROPOUT, TINY, compose_cfg
from lm.build import build_datamodule, build_task, build_trainer
from lm.errors import ConfigError
from lm.metrics import Perplexity


def build(corpus, tmp_path, *overrides):
    cfg = compose_cfg([*TINY, f"data.data_dir={corpus}", "trainer.num_sanity_val_steps=0", *overrides], tmp_path)
    dm = build_datamodule(cfg)
    return cfg, dm, build_task(cfg, dm.vocab), build_trainer(cfg)


def test_perplexity_is_token_weighted_over_the_split():
    metric = Perplexity()
    metric.update(torch.tensor(2.0), 30)
    metric.update(torch.tensor(4.0), 10)  # a short last window counts for its 10 tokens only
    assert metric.compute().item() == pytest.approx(math.exp((2.0 * 30 + 4.0 * 10) / 40))


class StateSpy:
    """Records, for every forward call, the mode and the (h, c) going in and coming out."""

    def __init__(self, model):
        self.calls = []
        forward = model.forward

        def spy(tokens, hidden):
            logits, new = forward(tokens, hidden)
            self.calls.append({
                "training": model.training,
                "in": [(h.detach().clone(), c.detach().clone()) for h, c in hidden],
                "in_has_graph": any(h.grad_fn is not None or c.grad_fn is not None for h, c in hidden),
                "out": [(h.detach().clone(), c.detach().clone()) for h, c in new],
            })
            return logits, new

        model.forward = spy


def _same(a, b):
    return all(torch.equal(h1, h2) and torch.equal(c1, c2) for (h1, c1), (h2, c2) in zip(a, b))


def _zero(state):
    return all(not h.any() and not c.any() for h, c in state)


def test_hidden_state_carried_across_batches_and_reset_at_epoch_and_eval_start(corpus, tmp_path):
    # 4 training windows per epoch, validation after the 2nd and the 4th, 2 epochs.
    _, dm, task, trainer = build(
        corpus, tmp_path, "trainer.max_epochs=2", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=3", "trainer.val_check_interval=2",
    )
    spy = StateSpy(task.model)
    trainer.fit(task, datamodule=dm)

    calls = spy.calls
    modes = "".join("T" if c["training"] else "v" for c in calls)
    assert modes == "TTvvvTTvvv" * 2
    train = [c for c in calls if c["training"]]
    for epoch in range(2):
        first, *rest = train[4 * epoch: 4 * epoch + 4]
        assert _zero(first["in"])  # fresh state at each epoch start
        prev = first
        for call in rest:
            assert _same(call["in"], prev["out"])  # carried over, validation in between or not
            assert not call["in_has_graph"]  # ... and detached from the previous window's graph
            prev = call
    # Each validation run starts from zeros and carries its own state across its windows.
    for start in (i for i in range(len(calls)) if not calls[i]["training"] and calls[i - 1]["training"]):
        assert _zero(calls[start]["in"])
        assert _same(calls[start + 1]["in"], calls[start]["out"])
        assert _same(calls[start + 2]["in"], calls[start + 1]["out"])


def test_test_state_is_reset_and_separate(corpus, tmp_path):
    _, dm, task, trainer = build(corpus, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                                 "trainer.limit_val_batches=2", "trainer.limit_test_batches=3")
    trainer.fit(task, datamodule=dm)
    spy = StateSpy(task.model)
    trainer.test(task, datamodule=dm, verbose=False)
    trainer.test(task, datamodule=dm, verbose=False)
    assert len(spy.calls) == 6
    assert _zero(spy.calls[0]["in"]) and _zero(spy.calls[3]["in"])
    assert _same(spy.calls[1]["in"], spy.calls[0]["out"])


def test_validation_perplexity_equals_manual_computation(corpus, tmp_path):
    _, dm, task, trainer = build(corpus, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=3")
    trainer.fit(task, datamodule=dm)
    logged = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/ppl"]
    model = task.model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        hidden = model.init_hidden(dm.eval_batch_size)
        for x, y in dm.val_dataloader():
            logits, hidden = model(x, hidden)
            nll += torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
            count += y.numel()
    assert count == dm.windows("valid").streams.numel() - dm.eval_batch_size
    assert logged == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_lr_decays_per_epoch_and_alpha_follows_schedule(corpus, tmp_path):
    _, dm, task, trainer = build(
        corpus, tmp_path, "trainer.max_epochs=3", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "lr_schedule=decay", "optim.lr_decay.factor=0.5", "optim.lr_decay.after_epoch=1",
        "alpha_schedule=linear", "alpha_schedule.length=2", "loss.alpha=0.8", "trainer.log_every_n_steps=1",
    )
    seen = []
    step = task.training_step

    def record(batch, batch_idx):
        seen.append((task.trainer.optimizers[0].param_groups[0]["lr"], task.current_alpha(batch_idx)))
        return step(batch, batch_idx)

    task.training_step = record
    trainer.fit(task, datamodule=dm)
    lrs = [lr for lr, _ in seen]
    alphas = [a for _, a in seen]
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert alphas == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])
    logged = trainer.logged_metrics
    assert {"train/loss", "train/ppl", "alpha", "lr", "val/ppl"} <= set(logged)


def test_plateau_schedule_divides_lr_when_validation_stalls(corpus, tmp_path):
    _, dm, task, trainer = build(corpus, tmp_path, "lr_schedule=plateau", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    trainer.fit(task, datamodule=dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert trainer.lr_scheduler_configs[0].monitor == "val/ppl"
    optimizer = trainer.optimizers[0]
    scheduler.step(1.0)
    scheduler.step(2.0)  # worse: one stalled epoch is enough (patience 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_step_metrics_are_logged_exactly_on_the_steps_lightning_writes(corpus, tmp_path):
    import csv

    cfg, dm, task, _ = build(corpus, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=7",
                             "trainer.limit_val_batches=1", "trainer.log_every_n_steps=3")
    from lm.build import build_trainer

    trainer = build_trainer(cfg)  # with the CSV logger of conf/logger/csv.yaml
    trainer.fit(task, datamodule=dm)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert logged_steps == [2, 5]  # global steps 3 and 6, counted from 0
    assert all(float(r["alpha"]) >= 0 and float(r["lr"]) == 1.0 for r in rows if r.get("train/loss"))


def test_tau_follows_its_schedule_and_reaches_the_loss(corpus, tmp_path):
    _, dm, task, trainer = build(
        corpus, tmp_path, "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "tau_schedule=linear", "tau_schedule.start=0.5", "loss.tau=2.0", "tau_schedule.length=4",
        "tau_schedule.unit=step", "trainer.log_every_n_steps=1",
    )
    seen = []
    forward = task.loss.forward

    def record(*args, **kwargs):
        seen.append(kwargs["tau"])
        return forward(*args, **kwargs)

    task.loss.forward = record
    trainer.fit(task, datamodule=dm)
    assert seen == pytest.approx([0.5, 0.875, 1.25, 1.625])
    assert float(trainer.logged_metrics["tau"]) == pytest.approx(1.625)


def test_target_spread_is_logged_over_the_validation_words_at_the_tau_of_the_last_step(corpus, tmp_path):
    from lm.analysis import augmented_pull, target_axis, target_spread

    _, dm, task, trainer = build(
        corpus, tmp_path, "loss=augmented", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "tau_schedule=linear", "tau_schedule.start=0.5", "loss.tau=2.0", "tau_schedule.length=4",
        "tau_schedule.unit=step", "callbacks.diagnostics.pull_every=1",
    )
    trainer.fit(task, datamodule=dm)
    counts = sum(torch.bincount(y.reshape(-1), minlength=dm.vocab_size) for _, y in dm.val_dataloader())
    last_tau = 0.5 + 1.5 * 2 / 4  # global step 2 of the ramp
    expected = target_spread(task.model.embedding.weight, counts, last_tau)
    expected["axis"] = target_axis(task.model.embedding.weight, counts)["logits"]
    for key, value in expected.items():
        assert float(trainer.logged_metrics[f"target/{key}"]) == pytest.approx(value, rel=1e-5), key
    # The tau matters: loss.tau (the ramp's end) gives another spread.
    assert target_spread(task.model.embedding.weight, counts, 2.0)["self"] != pytest.approx(expected["self"], rel=1e-3)
    # The augmented term's pull over the same validation (every window: pull_every=1), the validation
    # streams read again as calibration.py reads a text.
    streams = dm.windows("valid").streams
    pull = augmented_pull(task.model.eval(), streams.t().reshape(-1), task.current_alpha(), last_tau,
                          streams=streams.size(1), bptt=dm.bptt)
    for key in ("ratio", "cosine"):
        assert float(trainer.logged_metrics[f"pull/{key}"]) == pytest.approx(pull[key], rel=1e-4), key
    assert 0 < pull["ratio"]

    _, dm, task, trainer = build(corpus, tmp_path / "ce", "loss=ce", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=2")
    trainer.fit(task, datamodule=dm)
    assert "val/ppl" in trainer.logged_metrics and "target/self" not in trainer.logged_metrics  # no y~ to describe
    assert "pull/ratio" not in trainer.logged_metrics


def test_pull_every_must_be_a_positive_number_of_windows():
    from lm.callbacks import PaperDiagnostics

    for bad in (0, 2.5):
        with pytest.raises(ConfigError, match="callbacks.diagnostics.pull_every must be a positive integer"):
            PaperDiagnostics(pull_every=bad)


def test_tau_schedule_must_stay_positive(corpus, tmp_path):
    from lm.errors import ConfigError

    with pytest.raises(ConfigError, match="tau schedule must stay > 0"):
        build(corpus, tmp_path, "tau_schedule=linear", "tau_schedule.start=0")


@pytest.mark.parametrize("sum_over_time", [True, False])
def test_variable_windows_weigh_the_loss_by_their_length(corpus, tmp_path, sum_over_time):
    import pytorch_lightning as pl

    _, dm, task, trainer = build(corpus, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=6",
                                 "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "model=untied",
                                 "loss=ce", "data.variable_bptt=true", "data.bptt_std=3",
                                 f"optim.sum_over_time={str(sum_over_time).lower()}")
    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((batch[0].size(0), float(outputs["loss"]), float(trainer.callback_metrics["train/loss"])))

    trainer.callbacks.append(Record())
    trainer.fit(task, datamodule=dm)
    assert len({length for length, _, _ in seen}) > 1  # the windows really differ in length
    for length, returned, per_token in seen:
        factor = length if sum_over_time else length / 8  # data.bptt=8 in TINY: AWD-LSTM's lr * L / bptt
        assert returned == pytest.approx(per_token * factor, rel=1e-5)


def test_plateau_hold_ignores_the_first_epochs_and_survives_a_resume():
    from lm.schedules import HeldPlateau

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = HeldPlateau(optimizer, hold_epochs=2, mode="min", factor=0.25, patience=0)
    scheduler.step(1.0)
    scheduler.step(5.0)  # worse, but held: the objective may still be ramping
    assert optimizer.param_groups[0]["lr"] == 1.0
    resumed = HeldPlateau(optimizer, hold_epochs=2, mode="min", factor=0.25, patience=0)
    resumed.load_state_dict(scheduler.state_dict())
    resumed.step(3.0)  # first counted epoch: the best so far, though worse than the held 1.0
    assert optimizer.param_groups[0]["lr"] == 1.0
    resumed.step(4.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="hold_epochs"):
        HeldPlateau(optimizer, hold_epochs=-1)


def test_one_training_step_forces_only_the_allowed_host_syncs(corpus, tmp_path):
    """Ops that make the host wait for the device, counted in one whole step (forward, loss, backward,
    clipping, update, logging) on CPU. Allowed: the augmented loss's torch.unique (y~ once per distinct
    target word), the finite check's read (on a GPU, of the previous step's loss, already computed) and,
    on a CPU only, the augmented loss's backward reading whether its upstream gradient is the one it
    formed its gradient for (lm/losses.py; on a GPU it multiplies instead). That backward finds the
    window length it was told, so it does not multiply the (tokens, vocabulary) logit gradient."""
    from collections import Counter

    import pytorch_lightning as pl
    from torch.utils._python_dispatch import TorchDispatchMode

    from helpers import TINY, compose_cfg
    from lm.build import build_datamodule, build_task, build_trainer

    syncing = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "bincount",
               "masked_select", "equal", "is_nonzero"}

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in syncing:
                self.ops[name] += 1
            if name == "mul_" and args[0].shape == logit_shape:
                self.ops["mul_ of the logit gradient"] += 1
            return func(*args, **(kwargs or {}))

    class Spy(pl.Callback):
        mode = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 3:
                self.mode = Count().__enter__()
            if batch_idx == 4:  # window 3 whole, the callbacks that run after this one included
                self.mode.__exit__(None, None, None)

    cfg = compose_cfg([*TINY, f"data.data_dir={corpus}", "loss=augmented", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=5", "trainer.limit_val_batches=1"], tmp_path)
    dm = build_datamodule(cfg)
    logit_shape = (cfg.data.bptt * cfg.data.batch_size, len(dm.vocab))
    task = build_task(cfg, dm.vocab)
    trainer = build_trainer(cfg, with_logger=False)
    spy = Spy()
    trainer.callbacks.append(spy)
    trainer.fit(task, datamodule=dm)
    assert dict(spy.mode.ops) == {"_unique2": 1, "_local_scalar_dense": 2}


@pytest.mark.parametrize("pred_bias", [True, False])
def test_training_step_takes_the_output_bias_out_of_the_prediction_when_told(corpus, tmp_path, pred_bias):
    # A tied model with a bias: with loss.pred_bias=false the bias's gradient is cross-entropy's alone.
    _, dm, task, trainer = build(corpus, tmp_path, "model=tied", "model.output_bias=true", "loss=augmented",
                                 f"loss.pred_bias={str(pred_bias).lower()}", "loss.tau=2", "optim.sum_over_time=false",
                                 *NO_DROPOUT)
    torch.nn.init.uniform_(task.model.decoder.bias, -1.0, 1.0)
    task.trainer = trainer
    x, y = next(iter(dm.train_dataloader()))
    task.training_step((x, y), 0).backward()
    logits, _ = task.model(x, task.model.init_hidden(x.size(1)))
    z = logits.detach().view(-1, logits.size(-1))
    ce_part = (torch.softmax(z, -1) - torch.nn.functional.one_hot(y.reshape(-1), z.size(1))).sum(0) / z.size(0)
    matches_ce = torch.allclose(task.model.decoder.bias.grad, ce_part, atol=1e-6)
    assert matches_ce == (not pred_bias)
