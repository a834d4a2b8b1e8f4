"""The entry points as a user runs them: subprocesses, real config composition, files on disk."""

import json
import math
import re
from collections import Counter

import pytest

from helpers import NO_DROPOUT, TINY, run_script, write_corpus
from lm.analysis import load_model, predict_next
from lm.cli import checkpoint_tool_parser, parse_tool_args


def _common(corpus, run_dir):
    return [*TINY, f"data.data_dir={corpus}", "trainer.max_epochs=2", "trainer.limit_train_batches=5",
            f"hydra.run.dir={run_dir}"]


@pytest.mark.slow
def test_train_writes_metrics_and_evaluate_reproduces_them(corpus, tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", *_common(corpus, run_dir), "model=untied", "loss=augmented", "loss.alpha=0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/ppl", "test/ppl", "train_tokens_per_s"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["epochs"] == 2 and metrics["alpha"] == 0.3 and metrics["model"] == "untied"
    assert metrics["params"] > 0
    assert "val/ppl" in result.stdout and str(run_dir) in result.stdout  # the one-line summary
    best = run_dir / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "vocab.txt").is_file() and (run_dir / "csv" / "metrics.csv").is_file()
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "subspace_distance" in header  # the paper's W-to-span(L) distance, logged for untied models
    assert {"target/self", "target/near", "target/entropy", "target/axis"} <= set(header.split(","))  # y~
    assert {"pull/ratio", "pull/cosine"} <= set(header.split(","))  # the augmented term against cross-entropy

    # No model settings: the untied checkpoint says what it is (the default config is tied).
    data_only = [o for o in TINY if o.startswith("data.")]
    evaluated = run_script("evaluate.py", *data_only, f"data.data_dir={corpus}",
                           f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert scores["val/ppl"] == pytest.approx(metrics["val/ppl"], rel=1e-5)
    assert scores["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-5)


@pytest.mark.slow
def test_multirun_sweeps_alpha_and_records_it(corpus, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "loss.alpha=0.1,0.9", *_common(corpus, tmp_path / "unused"),
                        "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    records = [json.loads(p.read_text()) for p in runs]
    assert sorted(r["alpha"] for r in records) == [0.1, 0.9]
    assert all("loss.alpha=" + str(r["alpha"]) in r["overrides"] for r in records)
    assert records[0]["val/ppl"] != records[1]["val/ppl"]


def test_impossible_tying_is_one_clear_line(corpus, tmp_path):
    result = run_script("train.py", *_common(corpus, tmp_path / "run"), "model=tied", "model.emb_size=8")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: model=tied needs model.emb_size == model.hidden_size" in result.stderr


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_script("train.py", *TINY, f"data.data_dir={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing split" in result.stderr and "PTB_DIR" in result.stderr


def test_evaluate_without_checkpoint_says_what_to_pass(corpus, tmp_path):
    result = run_script("evaluate.py", *TINY, f"data.data_dir={corpus}", f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 2 and "ckpt_path=PATH" in result.stderr


@pytest.mark.slow
def test_benchmark_prints_its_json_record(tmp_path):
    # 50 steps: Lightning writes its logs once (log_every_n_steps), as in a real run. A corpus named as PTB's
    # files are: the record projects a whole run from the split sizes.
    corpus = write_corpus(tmp_path / "ptb", lines=(1500, 100, 100), prefix="ptb.")
    result = run_script("benchmark.py", "--data-dir", str(corpus), "--steps", "50", "--warmup", "1", "--batch", "4",
                        "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("plain_ce_tokens_per_s", "lightning_ce_tokens_per_s", "lightning_al_tokens_per_s",
                "eval_tokens_per_s", "al_over_ce", "lightning_over_plain", "projected_al_run_hours",
                "lightning_ce_nn_lstm_tokens_per_s"):  # size=small trains with state dropout
        assert record[key] > 0, key
    assert record["al_over_ce"] == pytest.approx(
        record["lightning_al_tokens_per_s"] / record["lightning_ce_tokens_per_s"])
    assert record["state_dropout_over_nn_lstm"] == pytest.approx(
        record["lightning_ce_tokens_per_s"] / record["lightning_ce_nn_lstm_tokens_per_s"])
    for key in ("layer_widened_over_nn_lstm", "layer_state_dropout_over_nn_lstm", "layer_products_over_nn_lstm"):
        assert record[key] > 0, key
    assert {"peak_mb_plain", "peak_mb_ce", "peak_mb_al"} <= set(record)
    # Without state dropout there is nothing to set beside nn.LSTM.
    result = run_script("benchmark.py", "--vocab", "50", "--steps", "2", "--warmup", "1", "--batch", "4", "--json",
                        "model.dropout_state=0")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert not {k for k in record if "nn_lstm" in k}


def test_benchmark_builds_the_model_with_train_py_overrides():
    result = run_script("benchmark.py", "--vocab", "50", "--steps", "2", "--warmup", "1", "model.dropout_recurrent=1")
    assert "model.dropout_recurrent must be in [0, 1), got 1." in result.stderr  # the model's own check, not argparse


def test_checkpoint_tools_take_the_checkpoint_as_evaluate_py_does():
    parser = checkpoint_tool_parser("a tool")
    parser.add_argument("word")
    for argv in (["money", "ckpt_path=runs/a=1/best.ckpt"], ["--ckpt", "runs/a=1/best.ckpt", "money"]):
        args = parse_tool_args(parser, argv)
        assert (args.word, args.ckpt) == ("money", "runs/a=1/best.ckpt")


@pytest.mark.slow
def test_predict_neighbors_and_calibration_read_a_trained_checkpoint(corpus, tmp_path):
    run_dir = tmp_path / "run"
    # Without the tied preset's output bias: with it, this 16-unit model stays near the unigram of the toy
    # language for these 6 epochs (val/ppl 35.5 against 6.9), and the check below needs a model that learnt it.
    result = run_script("train.py", *_common(corpus, run_dir), "model=tied", "model.output_bias=false", "loss=ce",
                        "trainer.max_epochs=6", "trainer.limit_train_batches=null", *NO_DROPOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = str(run_dir / "checkpoints" / "best.ckpt")
    # write_corpus's language: after each word comes one of two others 90% of the time. The contexts are
    # prefixes of the training stream (a zero state before a lone word or two is a context training never saw).
    stream = [w for line in (corpus / "train.txt").read_text().splitlines() for w in [*line.split(), "<eos>"]]
    followers = {}
    for a, b in zip(stream, stream[1:]):
        followers.setdefault(a, Counter())[b] += 1
    contexts = [stream[:n] for n in range(20, 40) if stream[n - 1] != "<eos>"]
    predicted = run_script("predict.py", " ".join(contexts[0]), "--ckpt", ckpt, "--k", "3")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = [line.split() for line in predicted.stdout.strip().splitlines()]
    assert len(lines) == 3 and all(0 < float(p) <= 1 for p, _ in lines)
    model, vocab = load_model(ckpt)
    assert [(w, pytest.approx(float(p), abs=1e-4)) for p, w in lines] == predict_next(model, vocab, " ".join(contexts[0]), 3)
    hits = [predict_next(model, vocab, " ".join(c), 1)[0][0] in [w for w, _ in followers[c[-1]].most_common(2)]
            for c in contexts]
    assert sum(hits) >= 0.75 * len(hits)  # it learnt the language (chance: 2 in 41)

    neighbors = run_script("neighbors.py", "w3", f"ckpt_path={ckpt}", "--k", "5")  # evaluate.py's form
    assert neighbors.returncode == 0, neighbors.stderr[-3000:]
    probs = [float(line.split()[0]) for line in neighbors.stdout.strip().splitlines()]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert neighbors.stdout.split()[1] == "w3"  # a word is most similar to itself

    missing = run_script("neighbors.py", "zebra", "--ckpt", ckpt)
    assert missing.returncode == 2 and "error: 'zebra' is not in the checkpoint's vocabulary" in missing.stderr

    spread = run_script("neighbors.py", "--spread", str(corpus / "valid.txt"), "--ckpt", ckpt, "--taus", "1,100")
    assert spread.returncode == 0, spread.stderr[-3000:]
    *table, axis = spread.stdout.strip().splitlines()[1:]
    rows = [line.split(" | ") for line in table]
    assert [r[0] for r in rows] == ["1", "100"]
    assert float(rows[0][1]) > float(rows[1][1]) and float(rows[0][3]) < float(rows[1][3])  # hotter: flatter
    shares = [float(x) for x in re.findall(r"(\d\.\d+) of", axis)]
    assert axis.startswith("first principal axis of L:") and len(shares) == 2 and all(0 < x <= 1 for x in shares)
    calibrated = run_script("calibration.py", str(corpus / "valid.txt"), "--ckpt", ckpt, "--temps", "0.5,2",
                            "--streams", "2", "--bptt", "8", "--pull")  # TINY's data.eval_batch_size and data.bptt
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    *lines, pull = calibrated.stdout.strip().splitlines()
    rows = dict(line.split(" | ") for line in lines[2:])
    assert list(rows) == ["0.5", "1", "2"]
    ratio, cosine = re.fullmatch(r"augmented term at alpha 0.65, tau 20: its gradient on the top LSTM layer's output "
                                 r"is (\S+) of cross-entropy's in norm, cosine (\S+)", pull).groups()
    assert float(ratio) > 0 and -1 <= float(cosine) <= 1
    val_ppl = json.loads((run_dir / "metrics.json").read_text())["val/ppl"]
    assert float(rows["1"]) == pytest.approx(val_ppl, abs=0.005 + 1e-4 * val_ppl)  # printed to two decimals
    bad = run_script("calibration.py", str(corpus / "nope.txt"), "--ckpt", ckpt)
    assert bad.returncode == 2 and "error: " + str(corpus / "nope.txt") + " does not exist" in bad.stderr

    for args, message in ((["--spread", str(corpus / "nope.txt")], "does not exist"),
                          (["--spread", str(corpus / "valid.txt"), "--taus", "1,x"], "give temperatures > 0"),
                          ([], "give a WORD or --spread TEXT")):
        bad = run_script("neighbors.py", *args, "--ckpt", ckpt)
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr[-2000:]


def _last(run_dir):
    import torch

    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_another_runs_weights_only(corpus, tmp_path):
    import torch

    first = tmp_path / "stage1"
    result = run_script("train.py", *_common(corpus, first), "model=tied")
    assert result.returncode == 0, result.stderr[-3000:]
    source = first / "checkpoints" / "last.ckpt"
    stage1 = _last(first)

    # lr 0: the new run's weights are the source's, untouched; its steps, epochs and schedules start at 0.
    second = tmp_path / "stage2"
    args = [*_common(corpus, second), "model=tied", f"init_from={source}", "trainer.max_epochs=1"]
    result = run_script("train.py", *args, "optim.optimizer.lr=0")
    assert result.returncode == 0, result.stderr[-3000:]
    stage2 = _last(second)
    for name, value in stage1["state_dict"].items():
        assert torch.equal(stage2["state_dict"][name], value), name
    assert (stage1["global_step"], stage2["global_step"]) == (10, 5) and stage2["epoch"] == 0
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["init_from"] == str(source) and metrics["epochs"] == 1

    # resume=true continues the stage-2 run itself (its own last.ckpt wins over init_from).
    result = run_script("train.py", *args[:-1], "trainer.max_epochs=2", "resume=true", "optim.optimizer.lr=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _last(second)["global_step"] == 10
    assert f"Restoring states from the checkpoint path at {second / 'checkpoints' / 'last.ckpt'}" in result.stderr

