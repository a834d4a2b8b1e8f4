"""Two CPU processes (gloo) against one: the same perplexity, the same update, one run folder."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import NO_DROPOUT, REPO, TINY, run_script, write_corpus
from lm.build import close_distributed

pytestmark = pytest.mark.slow  # each test starts two processes (python -m pytest -m slow)

DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
# NO_DROPOUT: each process draws its own masks, so only a deterministic model can match exactly.


def _train(corpus, run_dir, *overrides):
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", *NO_DROPOUT, f"hydra.run.dir={run_dir}",
                        *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    if "trainer=ddp" in overrides:
        assert "MEMBER: 2/2" in result.stderr  # two processes really ran
    return run_dir


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_one_step_on_two_processes_equals_one_process_with_all_streams(corpus, tmp_path):
    one_step = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=2",
                "loss=augmented", "model=untied"]
    single = _train(corpus, tmp_path / "single", *one_step)
    # A state-dropout rate too small to drop anything: the DDP side trains through masked_lstm
    # (lm.lstm.masked_lstm), which must reduce its gradients like nn.LSTM's.
    ddp = _train(corpus, tmp_path / "ddp", *one_step, *DDP, "model.dropout_state=1e-9")
    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    # The same step with lr 0 leaves the initial weights: the step moved them, so the match says something.
    initial = _weights(_train(corpus, tmp_path / "zero", *one_step, "optim.optimizer.lr=0"))
    assert any(not torch.equal(a[n], w) for n, w in initial.items())

    # Where y~ puts its mass, over the validation words of both processes' shards together.
    spread = [[r["target/self"] for r in csv.DictReader((d / "csv" / "metrics.csv").open()) if r.get("target/self")]
              for d in (single, ddp)]
    assert len(spread[0]) == 1 and float(spread[1][0]) == pytest.approx(float(spread[0][0]), rel=1e-5)
    # And the augmented term's pull, pooled over both shards' tokens.
    pull = [[r["pull/ratio"] for r in csv.DictReader((d / "csv" / "metrics.csv").open()) if r.get("pull/ratio")]
            for d in (single, ddp)]
    assert len(pull[0]) == 1 and float(pull[1][0]) == pytest.approx(float(pull[0][0]), rel=1e-4)

    assert [p.relative_to(ddp) for p in ddp.rglob("metrics.json")] == [Path("metrics.json")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ddp", "single", "zero"]


def test_ddp_validation_perplexity_of_a_checkpoint_equals_single_process(corpus, tmp_path):
    run_dir = _train(corpus, tmp_path / "run", "trainer.max_epochs=1", "trainer.limit_train_batches=10")
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    scores = {}
    # 3 evaluation streams on 2 processes: uneven slices (2 and 1), token-weighted together.
    for name, extra in (("single", ["data.eval_batch_size=3"]), ("ddp", [*DDP, "data.eval_batch_size=3"])):
        result = run_script("evaluate.py", *TINY, f"data.data_dir={corpus}", f"ckpt_path={ckpt}",
                            f"hydra.run.dir={tmp_path / ('eval_' + name)}", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["ddp"]["val/ppl"] == pytest.approx(scores["single"]["val/ppl"], rel=1e-5)
    assert scores["ddp"]["test/ppl"] == pytest.approx(scores["single"]["test/ppl"], rel=1e-5)


def test_batch_not_divisible_by_processes_is_one_clear_line(corpus, tmp_path):
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", "data.batch_size=3", *DDP,
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "error: data.batch_size=3 does not divide among the 2 DDP processes" in result.stderr


def test_variable_bptt_on_two_processes_equals_one_process(corpus, tmp_path):
    # Two epochs of three windows each: both ranks must draw the same, epoch-dependent, window lengths.
    run = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
           "data.variable_bptt=true", "data.bptt_std=3"]
    a = _weights(_train(corpus, tmp_path / "single", *run))
    b = _weights(_train(corpus, tmp_path / "ddp", *run, *DDP))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("target", ["every process", "rank 1 only"])
def test_sigterm_stops_every_process_after_the_same_step_and_resume_finishes(tmp_path, target):
    # Lightning's own handler hangs both cases: it broadcasts inside the handler, once per signal received.
    corpus = write_corpus(tmp_path / "corpus", lines=(3000, 40, 40))  # about 1,000 steps per epoch
    args = [*TINY, f"data.data_dir={corpus}", *DDP, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "PTB_DIR"}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args, "trainer.max_epochs=30"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    if not children.exists():
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.skip("needs /proc/<pid>/task/<pid>/children (Linux) to find rank 1")
    time.sleep(0.2)  # into epoch 1's training
    rank1 = [int(pid) for pid in children.read_text().split()]
    assert len(rank1) == 1, rank1
    if target == "every process":
        os.killpg(proc.pid, signal.SIGTERM)  # as `kill -TERM -<pgid>`: rank 0 also forwards it to rank 1
    else:
        os.kill(rank1[0], signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail("the DDP run hung after SIGTERM:\n" + stderr[-3000:])
    assert proc.returncode == 143, stderr[-3000:]
    steps = re.findall(r"stopped by SIGTERM at epoch \d+, step (\d+)", stderr)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert steps == [str(saved["global_step"])] * 2, stderr[-3000:]  # both ranks, the step in last.ckpt

    resumed = run_script("train.py", *args, "resume=true", f"trainer.max_epochs={saved['epoch'] + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == saved["epoch"] + 1


def test_close_distributed_destroys_the_process_group():
    # Left to the interpreter's exit, gloo's threads can abort a run that succeeded (exit status -6).
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    close_distributed()
    assert not torch.distributed.is_initialized()
    close_distributed()  # no group left: nothing to do


def test_each_rank_draws_its_own_masks_and_a_resumed_ddp_run_is_exact(corpus, tmp_path):
    run = ["model.dropout_state=0.3", "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", *DDP]
    unbroken = _train_with_dropout(corpus, tmp_path / "unbroken", *run, "trainer.max_epochs=2")
    stopped = _train_with_dropout(corpus, tmp_path / "stopped", *run, "trainer.max_epochs=1")
    saved = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    rng = saved["callbacks"]["ExactResume"]["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    resumed = _train_with_dropout(corpus, tmp_path / "stopped", *run, "trainer.max_epochs=2", "resume=true")
    a, b = _weights(unbroken), _weights(resumed)
    for name in a:  # rank 1 resumed with its own generator, not rank 0's
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)

    # On one process the two saved states cannot both be used: fresh masks, a warning, and it trains.
    single = run_script("train.py", *TINY, f"data.data_dir={corpus}", "model.dropout_state=0.3",
                        "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", "trainer.max_epochs=3",
                        f"ckpt_path={stopped / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]
    assert "the checkpoint holds the RNG state of 2 processes and this run has 1" in single.stdout + single.stderr


def _train_with_dropout(corpus, run_dir, *overrides):
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", f"hydra.run.dir={run_dir}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_that_step(corpus, tmp_path):
    poison = ["+callbacks.poison._target_=poison.PoisonRank", "+callbacks.poison.rank=1", "+callbacks.poison.step=3"]
    start = time.time()
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", *DDP, *poison, "trainer.max_epochs=1",
                        f"hydra.run.dir={tmp_path / 'run'}", env={"PYTHONPATH": str(REPO / "tests")}, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.time() - start < 120  # not the collective's timeout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: training loss")]
    # Rank 0 reports the other rank's loss; rank 1's own line shows too unless rank 0's exit ends it first.
    assert any("on another process at step 3 " in e for e in errors), errors
    assert all("at step 3 " in e for e in errors) and len(errors) <= 2, errors  # one step for every rank
    assert not (tmp_path / "run" / "metrics.json").exists()
