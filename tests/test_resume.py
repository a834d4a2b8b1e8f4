"""Stopping and resuming: a run stopped anywhere and resumed ends exactly where an unbroken run ends."""

import os
import signal

import pytest
import pytorch_lightning as pl
import torch

from helpers import TINY, compose_cfg
from lm.build import build_datamodule, build_task, build_trainer
from lm.callbacks import SaveOnStop, StopRequested
from lm.callbacks import NonFiniteLoss
from pytorch_lightning.utilities.exceptions import SIGTERMException

# Dropout on, so that a resumed run only matches if the RNG state is restored too.
RUN = ["trainer.max_epochs=3", "trainer.num_sanity_val_steps=0", "model.dropout_emb=0.3",
       "model.dropout_hidden=0.3", "model.dropout_out=0.3", "model.dropout_state=0.3", "lr_schedule=decay",
       "optim.lr_decay.after_epoch=1",
       "alpha_schedule=linear", "alpha_schedule.unit=step", "alpha_schedule.length=50"]


class ValHistory(pl.Callback):
    def __init__(self):
        self.val = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.val.append(float(trainer.callback_metrics["val/ppl"]))


class SignalAt(pl.Callback):
    """Sends this process a signal after the given global step, as a scheduler or a user would."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class SignalInValidation(pl.Callback):
    """Sends this process SIGTERM at the start of the given epoch's validation."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == self.epoch and batch_idx == 0 and not trainer.sanity_checking:
            assert trainer.num_val_batches[0] >= 2  # else the signal would land after the last batch
            os.kill(os.getpid(), signal.SIGTERM)


def _fit(corpus, out_dir, *extra_callbacks, ckpt_path=None, overrides=()):
    cfg = compose_cfg([*TINY, f"data.data_dir={corpus}", *RUN, *overrides], out_dir)
    pl.seed_everything(cfg.seed)
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    trainer = build_trainer(cfg, with_logger=False)
    history = ValHistory()
    trainer.callbacks.extend([history, *extra_callbacks])
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, task, history.val


def _params(task):
    return {k: v.clone() for k, v in task.model.state_dict().items()}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    from helpers import write_corpus

    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    trainer, task, val = _fit(corpus, tmp_path_factory.mktemp("unbroken"))
    return corpus, trainer.num_training_batches, val, _params(task)


@pytest.fixture
def terminal_sigint():
    """Ctrl-C as in a terminal, also where pytest itself runs as a background job (which ignores SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("signum, exc", [(signal.SIGTERM, SIGTERMException),
                                         pytest.param(signal.SIGINT, StopRequested, marks=pytest.mark.slow)])
@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_stop_and_resume_matches_an_unbroken_run(unbroken, tmp_path, signum, exc, where, terminal_sigint):
    corpus, per_epoch, val_unbroken, params_unbroken = unbroken
    stop_step = per_epoch + per_epoch // 2 if where == "mid_epoch" else per_epoch
    with pytest.raises(exc):
        _fit(corpus, tmp_path, SignalAt(stop_step, signum))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    # SaveOnStop looks for a signal before SignalAt sends it within the same step, so it sees it one step later.
    assert saved["global_step"] == stop_step + 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back

    trainer, task, val_resumed = _fit(corpus, tmp_path, ckpt_path=str(last))
    assert trainer.global_step == 3 * per_epoch
    assert val_resumed[-1] == pytest.approx(val_unbroken[-1], rel=1e-4)
    for name, value in _params(task).items():
        torch.testing.assert_close(value, params_unbroken[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_sigterm_during_validation_finishes_it_and_resume_loses_no_epoch(unbroken, tmp_path):
    corpus, per_epoch, val_unbroken, params_unbroken = unbroken
    stopped = ValHistory()
    with pytest.raises(SIGTERMException):
        _fit(corpus, tmp_path, stopped, SignalInValidation(epoch=1))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Stopped at the end of the first step after epoch 1's validation.
    assert saved["global_step"] == 2 * per_epoch + 1 and len(stopped.val) == 2
    trainer, task, val_resumed = _fit(corpus, tmp_path, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert stopped.val + val_resumed == pytest.approx(val_unbroken, rel=1e-4)  # every epoch's val/ppl, once
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == per_epoch * (1 + val_unbroken.index(min(val_unbroken)))
    for name, value in _params(task).items():
        torch.testing.assert_close(value, params_unbroken[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_resume_without_the_saved_state_would_differ(unbroken, tmp_path):
    """The comparison above can fail: dropping the carried LSTM state and RNG state changes the result."""
    corpus, per_epoch, val_unbroken, _ = unbroken
    with pytest.raises(SIGTERMException):
        _fit(corpus, tmp_path, SignalAt(per_epoch + 3, signal.SIGTERM))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    del saved["callbacks"]["ExactResume"]
    torch.save(saved, last)
    _, _, val_resumed = _fit(corpus, tmp_path, ckpt_path=str(last))
    assert val_resumed[-1] != pytest.approx(val_unbroken[-1], rel=1e-4)


class PoisonLoss(pl.Callback):
    """Makes the model produce NaN from the given step on."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.embedding.weight[0].fill_(float("nan"))
                pl_module.model.embedding.weight[batch[0].flatten()].fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_the_best_checkpoint(unbroken, tmp_path):
    corpus, per_epoch, _, _ = unbroken
    with pytest.raises(NonFiniteLoss) as err:
        _fit(corpus, tmp_path, PoisonLoss(per_epoch + 5))
    message = str(err.value)
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert f"at step {per_epoch + 5} " in message and "nan" in message
    assert str(tmp_path / "checkpoints" / "last.ckpt") in message
    assert "optim.optimizer.lr" in message
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert saved["global_step"] == per_epoch  # written after epoch 0, not replaced
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert not (tmp_path / "checkpoints" / "last.ckpt.tmp").exists()


@pytest.mark.slow
def test_train_script_killed_with_sigterm_resumes_to_the_same_result(tmp_path):
    """As on a cluster: SIGTERM while training, then the same command with resume=true."""
    import json
    import subprocess
    import sys
    import time

    from helpers import REPO, run_script, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    args = [*TINY, f"data.data_dir={corpus}", *RUN, "trainer.max_epochs=4"]
    t0 = time.time()
    straight = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'straight'}")
    straight_s = time.time() - t0
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    # Signalled as soon as epoch 0 is saved, mostly in epoch 1's training; a signal in validation is
    # checked in-process above (test_sigterm_during_validation_finishes_it_and_resume_loses_no_epoch).
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "resume=true" in stderr
    assert "weights_only" not in stdout + stderr  # the stop's save says what it writes; no warning about loading
    assert not (run_dir / "metrics.json").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["callbacks"]["TrainThroughput"]["wall_s"] > 0
    # A recorded time far above the process's own seconds makes the bounds on the resumed run's wall
    # exact on any machine. (Counting best.ckpt's time twice is caught on the straight run below.)
    wall_before = 1000.0
    for name in ("best", "last"):
        ckpt = torch.load(run_dir / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=False)
        ckpt["callbacks"]["TrainThroughput"]["wall_s"] = wall_before
        torch.save(ckpt, run_dir / "checkpoints" / f"{name}.ckpt")

    t0 = time.time()
    resumed = run_script("train.py", *args, f"hydra.run.dir={run_dir}", "resume=true")
    resumed_s = time.time() - t0
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert b["epochs"] == a["epochs"] == 4
    assert b["val/ppl"] == pytest.approx(a["val/ppl"], rel=1e-4)
    assert b["test/ppl"] == pytest.approx(a["test/ppl"], rel=1e-4)
    # The stopped part of the run counts in its wall time, once: not again when best.ckpt is tested.
    assert wall_before - 0.05 < b["wall_s"] <= wall_before + resumed_s + 0.05
    ckpts = {name: torch.load(tmp_path / "straight" / "checkpoints" / f"{name}.ckpt", map_location="cpu",
                              weights_only=False)["callbacks"]["TrainThroughput"]["wall_s"] for name in ("best", "last")}
    # Counted twice, the straight run's wall would be at least last + best; counted once it is last plus
    # the test pass (on this tiny corpus shorter than the epochs before best.ckpt). metrics.json rounds
    # wall_s to 0.1 s: 0.05 either side.
    assert ckpts["last"] - 0.05 <= a["wall_s"] < ckpts["last"] + ckpts["best"] + 0.05
    assert a["wall_s"] <= straight_s + 0.05
    from lm.report import _val_curve

    # The log keeps the epochs validated before the stop: the same curve as the unbroken run's.
    curve_straight = _val_curve(tmp_path / "straight" / "csv" / "metrics.csv")
    curve_resumed = _val_curve(run_dir / "csv" / "metrics.csv")
    assert [e for e, _ in curve_resumed] == [e for e, _ in curve_straight] == [0, 1, 2, 3]
    assert [p for _, p in curve_resumed] == pytest.approx([p for _, p in curve_straight], rel=1e-4)


@pytest.mark.slow
def test_resume_with_a_fixed_target_restores_the_copy(tmp_path):
    """loss.target_refresh=7: the resumed run must use the copy taken before the stop, not a new one."""
    from helpers import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    extra = ["loss.target_refresh=7", "trainer.max_epochs=2"]

    def fit(out, *callbacks, ckpt_path=None):
        trainer, task, _ = _fit(corpus, out, *callbacks, ckpt_path=ckpt_path, overrides=extra)
        return trainer, task

    trainer, straight = fit(tmp_path / "straight")
    stop = trainer.num_training_batches + 13
    assert stop % 7 != 0  # resumed between two copies: a fresh copy at resume would differ
    with pytest.raises(SIGTERMException):
        fit(tmp_path / "stopped", SignalAt(stop, signal.SIGTERM))
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    _, resumed = fit(tmp_path / "stopped", ckpt_path=str(last))
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, straight.model.state_dict()[name], rtol=1e-4, atol=1e-6, msg=name)

    assert "target_snapshot" in saved["callbacks"]["ExactResume"]["loss"]
    saved["callbacks"]["ExactResume"]["loss"] = {}  # the control: without the saved copy the run differs
    torch.save(saved, last)
    _, without = fit(tmp_path / "stopped", ckpt_path=str(last))
    assert not torch.allclose(without.model.embedding.weight, straight.model.embedding.weight, rtol=1e-4, atol=1e-6)


class WindowLengths(pl.Callback):
    def __init__(self):
        self.lengths = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lengths.append((trainer.current_epoch, batch[0].size(0)))


@pytest.mark.slow
def test_variable_bptt_resumes_mid_epoch_in_the_same_windows(corpus, tmp_path):
    variable = ["data.variable_bptt=true", "data.bptt_std=3"]
    straight_lengths = WindowLengths()
    trainer, task, val_straight = _fit(corpus, tmp_path / "straight", straight_lengths, overrides=variable)
    per_epoch = trainer.num_training_batches
    epochs = [[n for e, n in straight_lengths.lengths if e == k] for k in range(3)]
    assert epochs[0] != epochs[1] and len(set(epochs[0])) > 1  # lengths vary, and boundaries move between epochs

    stop = per_epoch + per_epoch // 2
    with pytest.raises(SIGTERMException):
        _fit(corpus, tmp_path / "broken", SignalAt(stop, signal.SIGTERM), overrides=variable)
    resumed_lengths = WindowLengths()
    _, task_resumed, val_resumed = _fit(corpus, tmp_path / "broken", resumed_lengths, overrides=variable,
                                        ckpt_path=str(tmp_path / "broken" / "checkpoints" / "last.ckpt"))
    assert resumed_lengths.lengths == straight_lengths.lengths[stop + 1:]  # signalled in step `stop`, seen in the next
    assert val_resumed[-1] == pytest.approx(val_straight[-1], rel=1e-4)
    for name, value in _params(task_resumed).items():
        torch.testing.assert_close(value, _params(task)[name], rtol=1e-4, atol=1e-6, msg=name)


def test_wall_time_carries_over_from_the_checkpoint():
    from lm.callbacks import TrainThroughput

    clock = TrainThroughput()
    clock.load_state_dict({"tokens": 700, "seconds": 0.5, "wall_s": 1000.0})
    assert 1000.0 < clock.state_dict()["wall_s"] < 1060.0
    older = TrainThroughput()
    older.load_state_dict({"tokens": 700, "seconds": 0.5})  # a checkpoint written before wall_s was kept
    assert 0.0 < older.wall_s < 60.0


def test_an_ignored_sigint_stays_ignored():
    # A script's background jobs (cmd & in a non-interactive shell) start with SIGINT ignored; keep it so.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    try:
        callback = SaveOnStop()
        callback.on_train_start(None, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == callback._on_sigterm  # SIGTERM is taken all the same
        callback.on_train_end(None, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is sigterm_before
    finally:
        signal.signal(signal.SIGINT, before)
        signal.signal(signal.SIGTERM, sigterm_before)


def test_rng_state_holds_this_process_s_own_cuda_device_only(monkeypatch):
    """The CUDA generator saved is the one of this process's device, not one per visible device (which
    breaks when a job resumes on fewer GPUs); restored to the same device. CUDA mocked."""
    from lm.resume import rng_state, set_rng_state

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.full((16,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device, int(state[0]))))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("indexed by device count"))
    device = torch.device("cuda", 3)
    state = rng_state(device)
    assert set(state) == {"torch", "cuda"} and calls == [("get", device)]
    before = torch.get_rng_state()
    torch.rand(5)
    set_rng_state(state, device)
    assert torch.equal(torch.get_rng_state(), before) and calls[-1] == ("set", device, 7)
    assert set(rng_state(torch.device("cpu"))) == {"torch"}


@pytest.mark.slow
def test_an_epoch_unit_alpha_ramp_stopped_twice_mid_epoch_resumes_exactly(tmp_path):
    """alpha follows fractional epochs (current epoch + windows done / windows per epoch): each resumed
    process must pick up the window count, or alpha would restart at the epoch's first value."""
    from helpers import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    epoch_ramp = ("alpha_schedule.unit=epoch", "alpha_schedule.length=2")
    alphas = {}

    class Alphas(pl.Callback):
        def __init__(self, name):
            self.name = name

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            alphas.setdefault(self.name, {})[trainer.global_step] = pl_module.current_alpha(batch_idx)

    trainer, task, val_unbroken = _fit(corpus, tmp_path / "unbroken", Alphas("unbroken"), overrides=epoch_ramp)
    per_epoch, params_unbroken = trainer.num_training_batches, _params(task)
    run = tmp_path / "stopped"
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(SIGTERMException):  # a third into the first epoch
        _fit(corpus, run, SignalAt(per_epoch // 3, signal.SIGTERM), Alphas("stopped"), overrides=epoch_ramp)
    with pytest.raises(SIGTERMException):  # two thirds into the second
        _fit(corpus, run, SignalAt(per_epoch + 2 * per_epoch // 3, signal.SIGTERM), Alphas("stopped"),
             ckpt_path=str(last), overrides=epoch_ramp)
    trainer, task, val_resumed = _fit(corpus, run, Alphas("stopped"), ckpt_path=str(last), overrides=epoch_ramp)
    assert trainer.global_step == 3 * per_epoch
    assert alphas["stopped"] == pytest.approx(alphas["unbroken"])  # every step's alpha, across both resumes
    assert len(set(alphas["unbroken"].values())) > per_epoch  # a ramp within epochs, not a step per epoch
    assert val_resumed[-1] == pytest.approx(val_unbroken[-1], rel=1e-4)
    for name, value in _params(task).items():
        torch.testing.assert_close(value, params_unbroken[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_loader_cannot_tell_an_epoch_cut_short_from_a_stopped_one_so_the_task_counts_the_position(corpus,
                                                                                                       tmp_path):
    """Why the mid-epoch position is the task's count of windows trained and not the loader's own
    state_dict: with trainer.limit_train_batches, Lightning ends the epoch before the loader runs out, so a
    loader's count would read as a run stopped mid-epoch; the task compares it with num_training_batches."""
    from lm.data import WindowLoader

    cfg = compose_cfg([*TINY, f"data.data_dir={corpus}", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                       "trainer.limit_val_batches=1"], tmp_path)
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    taken, at_epoch_end = [0], []

    class Counting(WindowLoader):
        def __iter__(self):
            for window in super().__iter__():
                taken[0] += 1
                yield window

    class AtEpochEnd(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            at_epoch_end.append((taken[0], pl_module.windows_done, trainer.num_training_batches))

    loader = Counting(dm.windows("train"))
    trainer = build_trainer(cfg, with_logger=False)
    trainer.callbacks.append(AtEpochEnd())
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=dm.val_dataloader())
    (handed_out, done, per_epoch), = at_epoch_end
    assert handed_out == done == per_epoch == 3 < len(loader)  # the epoch is over, the loader is not
