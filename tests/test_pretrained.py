"""model.pretrained_vectors and model.freeze_embedding_epochs."""

import re

import pytest
import pytorch_lightning as pl
import torch

from helpers import TINY, compose_cfg, run_script
from lm.build import build_datamodule, build_task, build_trainer
from lm.errors import ConfigError, DataError
from lm.pretrained import init_embedding

VOCAB = ["the", "cat", "sat", "<unk>", "<eos>"]


def _write(path, lines, header=None):
    text = (f"{header}\n" if header else "") + "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def test_word2vec_file_sets_the_found_rows_and_leaves_the_others(tmp_path):
    path = _write(tmp_path / "v.txt", ["cat 1 2 3", "dog 9 9 9", "the -1 0.5 2e-1"], header="3 3")
    embedding = torch.nn.Embedding(len(VOCAB), 3)
    before = embedding.weight.detach().clone()
    assert init_embedding(embedding, path, VOCAB) == 2
    w = embedding.weight.detach()
    assert torch.equal(w[1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(w[0], torch.tensor([-1.0, 0.5, 0.2]))
    assert torch.equal(w[2:], before[2:])  # sat, <unk>, <eos>: not in the file


def test_glove_file_without_header_and_a_word_with_a_space(tmp_path):
    path = _write(tmp_path / "g.txt", ["sat 1 1", "new york 2 2", "cat 3 3"])
    embedding = torch.nn.Embedding(len(VOCAB) + 1, 2)
    assert init_embedding(embedding, path, [*VOCAB, "new york"]) == 3
    assert torch.equal(embedding.weight[5].detach(), torch.tensor([2.0, 2.0]))


@pytest.mark.parametrize("lines,header,error,match", [
    (["cat 1 2 3 4"], None, ConfigError, "have 4 components, but model.emb_size is 3"),
    (["cat 1 2"], "1 2", ConfigError, "have 2 components"),
    (["dog 1 2 3"], None, DataError, "no vector for any"),
    (["cat 1 2 3", "sat 1 2"], None, DataError, "line 2 has 2 components"),
    (["cat 1 x 3"], None, DataError, "line 1"),
])
def test_bad_vector_files_are_one_clear_error(tmp_path, lines, header, error, match):
    path = _write(tmp_path / "v.txt", lines, header)
    with pytest.raises(error, match=match):
        init_embedding(torch.nn.Embedding(len(VOCAB), 3), path, VOCAB)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        init_embedding(torch.nn.Embedding(5, 3), tmp_path / "nope.txt", VOCAB)
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="not UTF-8"):
        init_embedding(torch.nn.Embedding(5, 3), tmp_path / "b.bin", VOCAB)


def _vectors_for(dm, tmp_path, dim=16, every=2):
    g = torch.Generator().manual_seed(0)
    words = dm.vocab.itos[::every]
    lines = [f"{w} " + " ".join(f"{v:.6f}" for v in torch.randn(dim, generator=g).tolist()) for w in words]
    return _write(tmp_path / "vectors.txt", lines), len(words)


def test_embedding_frozen_for_the_first_epochs_then_trained(corpus, tmp_path):
    probe = compose_cfg([*TINY, f"data.data_dir={corpus}"], tmp_path)
    path, count = _vectors_for(build_datamodule(probe), tmp_path)
    overrides = [*TINY, f"data.data_dir={corpus}", "trainer.num_sanity_val_steps=0", "trainer.max_epochs=3",
                 "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "model=untied",
                 f"model.pretrained_vectors={path}", "model.freeze_embedding_epochs=2"]
    cfg = compose_cfg(overrides, tmp_path)
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    start = task.model.embedding.weight.detach().clone()
    assert torch.allclose(start[0], torch.tensor([float(v) for v in path.read_text().split("\n")[0].split()[1:]]))
    snapshots = []

    class AtEpochEnd(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            snapshots.append((module.model.embedding.weight.detach().clone(), module.model.decoder.weight.detach().clone()))

    trainer = build_trainer(cfg)
    trainer.callbacks.append(AtEpochEnd())
    trainer.fit(task, datamodule=dm)
    assert torch.equal(snapshots[0][0], start) and torch.equal(snapshots[1][0], start)  # epochs 0, 1: frozen
    assert not torch.equal(snapshots[0][1], snapshots[1][1])  # ... while the untied classifier trains
    assert not torch.equal(snapshots[2][0], start)  # epoch 2: trained


@pytest.mark.slow
def test_train_py_reports_how_many_words_were_found(corpus, tmp_path):
    probe = compose_cfg([*TINY, f"data.data_dir={corpus}"], tmp_path)
    dm = build_datamodule(probe)
    path, count = _vectors_for(dm, tmp_path, every=3)
    result = run_script("train.py", *TINY, f"data.data_dir={corpus}", "trainer.max_epochs=1",
                        "trainer.limit_train_batches=2", f"model.pretrained_vectors={path}",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"{count} of {len(dm.vocab)} words found" in log
    # Resuming and evaluating take the weights from the checkpoint: the vector file is no longer needed.
    path.rename(tmp_path / "moved.txt")
    resumed = run_script("train.py", *TINY, f"data.data_dir={corpus}", "trainer.max_epochs=2",
                         "trainer.limit_train_batches=2", f"model.pretrained_vectors={path}",
                         f"hydra.run.dir={tmp_path / 'run'}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    evaluated = run_script("evaluate.py", *TINY, f"data.data_dir={corpus}", f"model.pretrained_vectors={path}",
                           f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                           f"hydra.run.dir={tmp_path / 'eval'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    path = tmp_path / "moved.txt"
    bad = run_script("train.py", *TINY, f"data.data_dir={corpus}", "model.emb_size=8", "model.hidden_size=8",
                     f"model.pretrained_vectors={path}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "model.emb_size=16" in bad.stderr and "Traceback" not in bad.stderr


def test_word2vec_of_the_training_split_is_seeded_and_reads_back_as_pretrained_vectors(corpus, tmp_path):
    pytest.importorskip("gensim", reason="needs the [vectors] extra")
    from lm.data import read_lines
    from lm.pretrained import read_vectors, train_word2vec, write_vectors

    lines = read_lines(corpus / "train.txt")
    first = train_word2vec(lines, vector_size=8, epochs=2, seed=3)
    assert first == train_word2vec(lines, vector_size=8, epochs=2, seed=3)  # same seed, same vectors
    assert first != train_word2vec(lines, vector_size=8, epochs=2, seed=4)
    assert set(first) == {w for line in lines for w in line}  # min_count 1: every training word, <eos> too
    vocab = sorted(first)
    write_vectors(tmp_path / "w2v.txt", first)
    found = read_vectors(tmp_path / "w2v.txt", vocab, 8)
    assert len(found) == len(vocab)
    for i, word in enumerate(vocab):
        assert torch.allclose(found[i], torch.tensor(first[word]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vectors_script_reads_only_the_training_split(corpus, tmp_path):
    pytest.importorskip("gensim", reason="needs the [vectors] extra")
    common = [f"data.data_dir={corpus}", "data.download=false", "data.sha256=null", "word2vec.vector_size=16",
              "word2vec.epochs=1"]
    out = tmp_path / "w2v.txt"
    result = run_script("vectors.py", *common, f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_text().splitlines()[0].split(" ")[1] == "16"
    cheat = run_script("vectors.py", *common, f"out={tmp_path / 'cheat.txt'}",
                       "+data.files={train: test.txt, valid: valid.txt, test: test.txt}")
    assert cheat.returncode == 2 and cheat.stderr.strip().splitlines()[-1].startswith(
        "error: the training split") and "must not see test text" in cheat.stderr
    assert not (tmp_path / "cheat.txt").exists()
    run = run_script("train.py", *TINY, f"data.data_dir={corpus}", f"model.pretrained_vectors={out}",
                     "trainer.max_epochs=1", "trainer.limit_train_batches=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-3000:]
    found = re.search(r"(\d+) of (\d+) words found", run.stdout + run.stderr)
    assert found and int(found[1]) == int(found[2]) - 1  # every word but <unk>, which the training text lacks
