import torch
import pytest

from helpers import write_corpus
from lm.data import EOS, UNK, BPTTWindows, CorpusDataModule, Vocabulary, batchify, place_streams, read_lines
from lm.errors import ConfigError, DataError


def make_dm(folder, **kw):
    dm = CorpusDataModule(str(folder), **{"batch_size": 4, "eval_batch_size": 3, "bptt": 5, **kw})
    dm.prepare_data()
    dm.setup()
    return dm


def test_batchify_lays_streams_in_columns():
    ids = torch.arange(23)
    streams = batchify(ids, 4)  # 23 // 4 = 5 steps; the last 3 tokens are dropped
    assert streams.shape == (5, 4)
    for b in range(4):
        assert streams[:, b].tolist() == list(range(5 * b, 5 * b + 5))


def test_windows_are_contiguous_and_targets_shifted(corpus):
    dm = make_dm(corpus)
    streams = dm.windows("train").streams
    xs, ys = zip(*dm.train_dataloader())
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    # Walking the windows in order re-reads every stream from its first token, without gaps.
    assert torch.equal(x_all, streams[:-1])
    assert torch.equal(y_all, streams[1:])
    for x, y in zip(xs, ys):
        assert x.shape == y.shape and x.size(1) == 4
        assert torch.equal(y[:-1], x[1:])
    for y0, x1 in zip(ys, xs[1:]):
        assert torch.equal(y0[-1], x1[0])  # a window's last target is the next window's first input
    assert all(x.size(0) == 5 for x in xs[:-1]) and 1 <= xs[-1].size(0) <= 5


def test_windows_are_views_not_copies(corpus):
    dm = make_dm(corpus)
    windows = dm.windows("train")
    x, y = windows[1]
    base = dm.windows("train").streams
    assert x.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    assert x.data_ptr() == base[5].data_ptr()


def test_eval_splits_use_their_own_batch_size(corpus):
    dm = make_dm(corpus)
    assert next(iter(dm.val_dataloader()))[0].size(1) == 3
    assert next(iter(dm.test_dataloader()))[0].size(1) == 3
    assert next(iter(dm.train_dataloader()))[0].size(1) == 4


def test_vocabulary_from_train_with_eos_and_oov_to_unk(tmp_path):
    (tmp_path / "train.txt").write_text("a b c\nb c a\n")
    (tmp_path / "valid.txt").write_text("a zebra b\n")
    (tmp_path / "test.txt").write_text("yak yak c\n")
    dm = make_dm(tmp_path, batch_size=1, eval_batch_size=1, bptt=2)
    v = dm.vocab
    assert v.itos[:4] == ["a", "b", "c", EOS] and UNK in v.stoi
    valid = dm._ids["valid"].tolist()
    assert valid == [v.stoi["a"], v.stoi[UNK], v.stoi["b"], v.stoi[EOS]]
    assert dm.oov["valid"] == {"zebra": 1}
    assert dm.oov["test"] == {"yak": 2}
    assert dm.oov["train"] == {}


def test_both_file_layouts_load_the_same(tmp_path):
    a = make_dm(write_corpus(tmp_path / "plain", seed=3))
    b = make_dm(write_corpus(tmp_path / "ptb", seed=3, prefix="ptb."))
    assert a.vocab.itos == b.vocab.itos
    for split in ("train", "valid", "test"):
        assert torch.equal(a.windows(split).streams, b.windows(split).streams)


def test_vocabulary_roundtrip(tmp_path, corpus):
    dm = make_dm(corpus)
    dm.vocab.save(tmp_path / "vocab.txt")
    assert Vocabulary.load(tmp_path / "vocab.txt").itos == dm.vocab.itos


def test_ddp_ranks_take_disjoint_contiguous_stream_slices(corpus):
    dm = make_dm(corpus)
    full = dm.windows("train").streams
    halves = [CorpusDataModule._shard(batchify(dm._ids["train"], 4), r, 2, "train") for r in (0, 1)]
    assert torch.equal(torch.cat(halves, dim=1), full)
    with pytest.raises(ConfigError, match=r"data.batch_size=4 does not divide among the 3 DDP processes; .*"
                                          r"data.batch_size=3 or data.batch_size=6"):
        CorpusDataModule._shard(full, 0, 3, "train")


@pytest.mark.parametrize("world", [2, 3, 4, 8, 10])
def test_evaluation_streams_split_over_any_number_of_processes(world):
    streams = torch.arange(7 * 10).view(7, 10)  # 10 streams, the default data.eval_batch_size
    shards = [CorpusDataModule._shard(streams, r, world, "valid") for r in range(world)]
    assert torch.equal(torch.cat(shards, dim=1), streams)  # every stream once, in order
    assert max(s.size(1) for s in shards) - min(s.size(1) for s in shards) <= 1 and min(s.size(1) for s in shards) > 0
    with pytest.raises(ConfigError, match="data.eval_batch_size=10 gives fewer .* 16 DDP processes; set "
                                          "data.eval_batch_size=16"):
        CorpusDataModule._shard(streams, 0, 16, "valid")


def test_missing_split_names_the_folder_and_the_setting(tmp_path, corpus):
    (corpus / "test.txt").unlink()
    dm = CorpusDataModule(str(corpus), download=False)
    with pytest.raises(DataError) as exc:
        dm.prepare_data()
    msg = str(exc.value)
    assert "test" in msg and str(corpus) in msg and "data.data_dir" in msg and "PTB_DIR" in msg


def test_empty_split_is_an_error(tmp_path, corpus):
    (corpus / "valid.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_lines(corpus / "valid.txt")


def test_split_without_final_newline_reads_as_with_it(corpus):
    path = corpus / "valid.txt"
    with_newline = read_lines(path)
    path.write_text(path.read_text().rstrip("\n"))
    assert read_lines(path) == with_newline and with_newline[-1][-1] == "<eos>"


def test_split_smaller_than_one_batch_of_windows_is_an_error(corpus):
    dm = CorpusDataModule(str(corpus), batch_size=4, eval_batch_size=2, bptt=8)
    dm.setup()  # the generated corpus is large enough
    (corpus / "test.txt").write_text("w1 w2 w3\n")
    with pytest.raises(DataError, match=r"test split has 4 tokens.*2 streams x 9 steps"):
        CorpusDataModule(str(corpus), batch_size=4, eval_batch_size=2, bptt=8).setup()


def test_window_loader_starts_one_pass_at_a_given_window(corpus):
    dm = CorpusDataModule(str(corpus), batch_size=4, eval_batch_size=2, bptt=8)
    dm.setup()
    loader = dm.train_dataloader()
    everything = [x for x, _ in loader]
    loader.start_at(3)
    rest = [x for x, _ in loader]
    assert len(rest) == len(everything) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, everything[3:]))
    assert len([x for x, _ in loader]) == len(everything)  # the next pass starts from the beginning

    loader.load_state_dict(loader.state_dict())
    with pytest.raises(ConfigError, match="data.batch_size and data.bptt"):
        loader.load_state_dict({"windows": len(everything) + 1})


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size", "bptt"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_are_config_errors(corpus, key, value):
    with pytest.raises(ConfigError, match=key):
        CorpusDataModule(str(corpus), **{key: value})


@pytest.mark.parametrize("steps,bptt", [(1000, 35), (97, 8), (20, 8), (7, 3)])
def test_variable_windows_cover_the_stream_with_as_many_windows_as_fixed_ones(steps, bptt):
    from lm.data import variable_starts

    starts = variable_starts(steps, bptt, epoch=0, seed=1)
    assert starts[0] == 0 and starts[-1] == steps
    assert len(starts) - 1 == -(-steps // bptt)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert starts == variable_starts(steps, bptt, epoch=0, seed=1)  # depends only on its arguments
    if steps >= 10 * bptt:
        assert starts != variable_starts(steps, bptt, epoch=1, seed=1)  # boundaries move between epochs


def test_variable_window_lengths_follow_awd_lstm():
    from lm.data import variable_starts

    starts = torch.tensor(variable_starts(350_000, 35, epoch=2, seed=0, std=5.0, half_prob=0.05))
    lengths = (starts[1:] - starts[:-1]).double()
    halves = lengths < 26  # well below 35 - 5 std ... of the full-length windows
    assert 0.03 < halves.double().mean() < 0.07
    full = lengths[~halves]
    stretch = 35 / (0.95 * 35 + 0.05 * 17.5)  # drawn lengths average 34.1; stretched to cover with 35
    assert full.mean().item() == pytest.approx(35 * stretch, rel=0.01)
    assert full.std().item() == pytest.approx(5.0, rel=0.15)


def test_loader_set_epoch_switches_to_that_epochs_windows(corpus):
    dm = CorpusDataModule(str(corpus), batch_size=4, bptt=8, variable_bptt=True, seed=3)
    dm.setup()
    loader = dm.train_dataloader()
    fixed_len = len(dm.windows("train"))
    streams = dm.windows("train").streams
    seen = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert len(loader) == fixed_len
        xs = [x for x, _ in loader]
        assert torch.equal(torch.cat(xs), streams[:-1])  # every epoch covers the whole stream once
        seen.append([x.size(0) for x in xs])
    assert seen[0] != seen[1]
    assert dm.val_dataloader().epoch_windows is None  # evaluation keeps fixed windows


def test_split_files_must_name_the_three_splits(corpus):
    with pytest.raises(ConfigError, match="data.files must name exactly the splits"):
        CorpusDataModule(str(corpus), files={"train": "a", "valid": "b"})


def test_streams_move_to_the_accelerator_once_unless_too_large(monkeypatch):
    import lm.data

    streams = torch.arange(40).view(10, 4)
    assert place_streams(streams, torch.device("cpu")) == (streams, False)
    moved, pin = place_streams(streams, torch.device("meta"))  # stands in for a GPU on a CPU-only machine
    assert moved.device.type == "meta" and pin is False
    monkeypatch.setattr(lm.data, "DEVICE_TOKENS", 39)
    kept, pin = place_streams(streams, torch.device("meta"))
    assert kept is streams and pin is False  # pinning is for CUDA copies only
