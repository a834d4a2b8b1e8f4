"""Every bad input a user can give the entry points: one clear line, a non-zero exit, nothing lost.

Each case runs the real script in a subprocess against the output folder of an earlier, good run
and checks that the files that run wrote are byte-for-byte intact afterwards.
"""

import hashlib
import shutil

import pytest
import torch

from helpers import TINY, run_script, write_corpus
from test_checkpoint import _Payload
from test_download import _serve, _Truncating

pytestmark = pytest.mark.slow  # a subprocess per case (python -m pytest -m slow); tests/test_checkpoint.py runs the
                               # checkpoint cases in-process in the default set


def _snapshot(run_dir):
    # .hydra/ and the log are rewritten by every run pointed at the folder; the results must not be.
    return {
        p.relative_to(run_dir): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_input")
    corpus = write_corpus(base / "corpus")
    run_dir = base / "run"
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", "trainer.max_epochs=1",
                        "trainer.limit_train_batches=5", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return corpus, run_dir


def _check(result, run_dir, before, *fragments, returncode=2):
    assert result.returncode == returncode, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])
    assert _snapshot(run_dir) == before


def _train(corpus, run_dir, *overrides, base=TINY):
    return run_script("train.py", *base, f"data.data_dir={corpus}", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=5", f"hydra.run.dir={run_dir}", *overrides)


def _damage(corpus, tmp_path, how):
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    how(data)
    return data


CORPUS_CASES = {
    "missing_folder": (lambda d: shutil.rmtree(d), ["missing split(s) train, valid, test", "data.data_dir"]),
    "missing_split": (lambda d: (d / "test.txt").unlink(), ["missing split(s) test", "PTB_DIR"]),
    "empty_split": (lambda d: (d / "valid.txt").write_text(""), ["valid.txt is empty"]),
    "not_utf8": (lambda d: (d / "train.txt").write_bytes(b"w1 \xff\xfe w2\n"), ["is not UTF-8"]),
    "smaller_than_one_batch": (lambda d: (d / "test.txt").write_text("w1 w2\n"),
                               ["test split has 3 tokens, fewer than one batch"]),
}


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_bad_corpus(earlier_run, tmp_path, case):
    corpus, run_dir = earlier_run
    before = _snapshot(run_dir)
    how, fragments = CORPUS_CASES[case]
    _check(_train(_damage(corpus, tmp_path, how), run_dir), run_dir, before, *fragments)


def test_checksum_mismatch(earlier_run):
    corpus, run_dir = earlier_run
    before = _snapshot(run_dir)
    base = [o for o in TINY if not o.startswith("data.sha256")]
    result = _train(corpus, run_dir, "~data.sha256", "+data.sha256={train.txt: " + "0" * 64 + "}", base=base)
    _check(result, run_dir, before, "does not match its known SHA-256", "Delete it to download it again")


def test_another_corpus_under_ptb_names_without_final_newlines_trains_with_the_override_the_error_names(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    for split in ("train", "valid", "test"):  # PTB's file names, another corpus, no newline at the end
        (corpus / f"ptb.{split}.txt").write_text((corpus / f"{split}.txt").read_text().rstrip("\n"))
        (corpus / f"{split}.txt").unlink()
    base = [o for o in TINY if not o.startswith("data.sha256")]
    refused = _train(corpus, tmp_path / "refused", base=base)
    assert refused.returncode == 2 and "does not match its known SHA-256" in refused.stderr
    fix = next(word for word in refused.stderr.split() if word.startswith("data.sha256="))
    trained = _train(corpus, tmp_path / "trained", fix, base=base)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "trained" / "metrics.json").is_file()


def test_interrupted_download_leaves_no_partial_file(earlier_run, tmp_path):
    _, run_dir = earlier_run
    before = _snapshot(run_dir)
    server, url = _serve(tmp_path, _Truncating)
    try:
        dest = tmp_path / "fresh"
        result = run_script("train.py", *[o for o in TINY if not o.startswith("data.")], f"data.data_dir={dest}",
                            f"data.url={url}", f"hydra.run.dir={run_dir}")
    finally:
        server.shutdown()
    _check(result, run_dir, before, "could not download", "data.data_dir")
    assert not dest.exists() or not any(dest.iterdir())


CONFIG_CASES = {
    "alpha_zero": (["loss=augmented", "loss.alpha=0"], "loss.alpha must be > 0"),
    "alpha_negative": (["loss=augmented", "loss.alpha=-0.5"], "loss.alpha must be > 0"),
    "tau_zero": (["loss=augmented", "loss.tau=0"], "loss.tau must be > 0"),
    "bptt_zero": (["data.bptt=0"], "data.bptt must be a positive integer"),
    "batch_negative": (["data.batch_size=-4"], "data.batch_size must be a positive integer"),
    "dropout_one": (["model.dropout_hidden=1.0"], "model.dropout_hidden must be in [0, 1)"),
    "dropout_negative": (["model.dropout_emb=-0.1"], "model.dropout_emb must be in [0, 1)"),
    "dropout_recurrent_one": (["model.dropout_recurrent=1"], "model.dropout_recurrent must be in [0, 1)"),
    "tied_sizes": (["model=tied", "model.emb_size=8"], "model.emb_size == model.hidden_size"),
    "vectors_missing": (["model.pretrained_vectors=/nonexistent/vectors.txt"], "/nonexistent/vectors.txt does not exist"),
    "freeze_negative": (["model.freeze_embedding_epochs=-1"], "model.freeze_embedding_epochs must be an integer >= 0"),
    "bptt_std_negative": (["data.variable_bptt=true", "data.bptt_std=-1"], "data.bptt_std must be >= 0"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_value(earlier_run, case):
    corpus, run_dir = earlier_run
    before = _snapshot(run_dir)
    overrides, fragment = CONFIG_CASES[case]
    _check(_train(corpus, run_dir, *overrides), run_dir, before, "error: ", fragment)


def test_unknown_config_option_lists_the_choices(earlier_run):
    corpus, run_dir = earlier_run
    before = _snapshot(run_dir)
    result = _train(corpus, run_dir, "model=tide")
    _check(result, run_dir, before, "Could not find 'model/tide'", "tied", "untied", returncode=1)


def test_unwritable_output_folder(earlier_run, tmp_path):
    corpus, _ = earlier_run
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"cannot write the output folder {blocker / 'run'}" in result.stderr and "hydra.run.dir" in result.stderr
    assert blocker.read_text() == "not a folder"


def _bad_checkpoints(run_dir, corpus, tmp_path):
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    corrupt, truncated = tmp_path / "corrupt.ckpt", tmp_path / "truncated.ckpt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    truncated.write_bytes(good[: len(good) // 2])
    other_vocab_corpus = write_corpus(tmp_path / "other_corpus", n_words=30, seed=5)
    return {
        "corrupt": (corrupt, [], "truncated or corrupt"),
        "truncated": (truncated, [], "truncated or corrupt"),
        "missing": (tmp_path / "nope.ckpt", [], "does not exist"),
        "other_vocabulary": (run_dir / "checkpoints" / "last.ckpt", [f"data.data_dir={other_vocab_corpus}"],
                             "trained on another vocabulary"),
        "other_size": (run_dir / "checkpoints" / "last.ckpt", ["model.emb_size=24", "model.hidden_size=24"],
                       "holds another model size"),
        "other_variant": (run_dir / "checkpoints" / "last.ckpt", ["model=untied"], "holds another model variant"),
    }


@pytest.mark.parametrize("script, case", [
    *(("evaluate.py", c) for c in ("corrupt", "truncated", "missing", "other_vocabulary", "other_size", "other_variant")),
    ("train.py", "truncated"), ("train.py", "other_size"),  # resuming goes through the same checks
    ("init_from", "other_vocabulary"), ("init_from", "other_size"), ("init_from", "other_variant"),
])
def test_bad_checkpoint(earlier_run, tmp_path, script, case):
    corpus, run_dir = earlier_run
    before = _snapshot(run_dir)
    path, overrides, fragment = _bad_checkpoints(run_dir, corpus, tmp_path)[case]
    if script == "init_from":  # a second training run, in a folder of its own
        result = run_script("train.py", *TINY, f"data.data_dir={corpus}", f"init_from={path}",
                            f"hydra.run.dir={tmp_path / 'stage2'}", *overrides)
        assert not (tmp_path / "stage2" / "checkpoints").exists()
    else:
        out = run_dir if script == "train.py" else tmp_path / "eval"
        result = run_script(script, *TINY, f"data.data_dir={corpus}", f"ckpt_path={path}", f"hydra.run.dir={out}",
                            *overrides)
    if script == "evaluate.py" and case in ("other_size", "other_variant"):  # evaluate reads the model from it
        fragment = f"contradicts checkpoint {path}"
    _check(result, run_dir, before, fragment)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


@pytest.mark.parametrize("entry", ["train.py ckpt_path", "train.py resume", "train.py init_from", "evaluate.py",
                                   "predict.py", "neighbors.py", "calibration.py"])
def test_a_checkpoint_carrying_code_is_refused_before_anything_runs(earlier_run, tmp_path, entry):
    corpus, run_dir = earlier_run
    before = _snapshot(run_dir)
    marker = tmp_path / "the_payload_ran"
    crafted = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    crafted["note"] = _Payload(marker)  # otherwise a good checkpoint, as a downloaded one could be
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    path = resumed / "checkpoints" / "last.ckpt"
    torch.save(crafted, path)
    data = [*TINY, f"data.data_dir={corpus}"]
    args = {
        "train.py ckpt_path": ("train.py", *data, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"),
        "train.py resume": ("train.py", *data, "resume=true", f"hydra.run.dir={resumed}"),
        "train.py init_from": ("train.py", *data, f"init_from={path}", f"hydra.run.dir={tmp_path / 'run'}"),
        "evaluate.py": ("evaluate.py", *data, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"),
        "predict.py": ("predict.py", "w1 w2", "--ckpt", str(path)),
        "neighbors.py": ("neighbors.py", "w1", "--ckpt", str(path)),
        "calibration.py": ("calibration.py", str(corpus / "valid.txt"), "--ckpt", str(path)),
    }[entry]
    result = run_script(*args)
    _check(result, run_dir, before, f"error: checkpoint {path} holds Python objects", "Use a checkpoint that train.py wrote")
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
