"""Penn Treebank (or any word corpus) as streams of BPTT windows.

A split is one long token sequence (``<eos>`` at every line end). ``batchify`` cuts it into B
parallel streams laid out as a (T, B) tensor; training walks it in consecutive windows of ``bptt``
steps, so the LSTM state at the end of one window is the right start for the next. Windows are
views into that tensor: no shuffling, no per-window copy. With ``variable_bptt`` the training
windows' lengths are drawn anew every epoch (AWD-LSTM), so their boundaries move between epochs.
``WindowLoader`` can begin a pass at any window, so a run stopped mid-epoch resumes at the next one.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from lm.download import download, extract, sha256_of
from lm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")


class Vocabulary:
    """Word <-> index, in order of first appearance in the training split."""

    def __init__(self, words: list[str]):
        self.itos = list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise DataError("vocabulary has duplicate words")

    @classmethod
    def from_lines(cls, lines: list[list[str]]) -> "Vocabulary":
        seen: dict[str, None] = {}
        for words in lines:
            seen.update(dict.fromkeys(words))
        seen.setdefault(UNK)  # valid/test words unseen in training need somewhere to go
        return cls(list(seen))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, lines: list[list[str]]) -> tuple[torch.Tensor, Counter]:
        """Token ids of all lines, and how often each out-of-vocabulary word was mapped to ``<unk>``."""
        unk = self.stoi.get(UNK)
        oov: Counter = Counter()
        ids = []
        for words in lines:
            for w in words:
                i = self.stoi.get(w)
                if i is None:
                    if unk is None:
                        raise DataError(f"{w!r} is not in the vocabulary, which has no {UNK}.")
                    oov[w] += 1
                    i = unk
                ids.append(i)
        return torch.tensor(ids, dtype=torch.long), oov

    def save(self, path: Path) -> None:
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls(Path(path).read_text(encoding="utf-8").split("\n")[:-1])


DEVICE_TOKENS = 1 << 27  # corpora up to this many tokens (1 GiB as int64) live on the accelerator


def place_streams(streams: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Where a split's token streams live, and whether its windows are pinned for the copy. On an
    accelerator a corpus of up to ``DEVICE_TOKENS`` tokens moves there once (PTB's training split is
    7 MB), so a step copies nothing; a larger one stays in host memory, pinned on CUDA."""
    if device.type == "cpu":
        return streams, False
    if streams.numel() <= DEVICE_TOKENS:
        return streams.to(device), False
    return streams, device.type == "cuda"


def split_path(data_dir: Path, split: str, files: dict[str, str] | None = None) -> Path | None:
    """``files[split]`` when given, else ``ptb.<split>.txt`` or ``<split>.txt``, whichever exists."""
    names = [files[split]] if files else [f"ptb.{split}.txt", f"{split}.txt"]
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def read_lines(path: Path) -> list[list[str]]:
    """Whitespace-split words of each line, with ``<eos>`` appended to every line, the last one too
    whether or not the file ends with a newline (many corpora do not; a truncated copy of a known
    corpus is what its checksum catches)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); re-encode it as UTF-8.") from exc
    lines = [line.split() + [EOS] for line in text.splitlines()]
    if not any(len(words) > 1 for words in lines):
        raise DataError(f"{path} is empty: it holds no words. Replace it with the real split.")
    return lines


def batchify(ids: torch.Tensor, num_streams: int) -> torch.Tensor:
    """Cut a 1-D token sequence into ``num_streams`` contiguous streams: (T, B), column b = stream b.

    The tail that does not fill a whole row is dropped (at most B - 1 tokens).
    """
    steps = ids.numel() // num_streams
    return ids[: steps * num_streams].view(num_streams, steps).t().contiguous()


class BPTTWindows(Dataset):
    """Consecutive windows ``(x, y)`` of a (T, B) stream tensor; ``y`` is ``x`` shifted by one step.

    Each item is a pair of (L, B) views. By default L = ``bptt`` except possibly for the last window;
    ``starts`` (window boundaries, from 0 to T - 1) gives windows of any lengths instead.
    """

    def __init__(self, streams: torch.Tensor, bptt: int, starts: list[int] | None = None):
        self.streams = streams
        self.bptt = bptt
        steps = streams.size(0) - 1
        self.starts = starts if starts is not None else [*range(0, steps, bptt), steps]

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, end = self.starts[i], self.starts[i + 1]
        return self.streams[start:end], self.streams[start + 1 : end + 1]


MIN_WINDOW = 5  # AWD-LSTM's shortest window


def variable_starts(steps: int, bptt: int, epoch: int, seed: int, std: float = 5.0,
                    half_prob: float = 0.05) -> list[int]:
    """Window boundaries for one epoch of variable-length BPTT over ``steps`` positions.

    Lengths are drawn as in AWD-LSTM (``bptt``, or ``bptt / 2`` with probability ``half_prob``, plus
    normal noise of ``std``, at least 5), then stretched to cover the stream exactly with as many
    windows as fixed-length BPTT has, so an epoch keeps its number of steps and Lightning its
    ``len``. The boundaries depend only on the arguments: every DDP rank draws the same ones (its
    streams have the same length) and a resumed run redraws its epoch's windows unchanged.
    """
    n = -(-steps // bptt)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    base = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < half_prob, bptt / 2, float(bptt))
    lengths = (base + std * torch.randn(n, generator=g, dtype=torch.float64)).clamp(min=min(MIN_WINDOW, bptt))
    ends = torch.round(lengths.cumsum(0) * (steps / lengths.sum())).long().tolist()
    for i in range(n):  # rounding must not leave an empty window
        ends[i] = min(max(ends[i], (ends[i - 1] if i else 0) + 1), steps - (n - 1 - i))
    return [0, *ends]


class WindowLoader:
    """Iterates the windows of one split in order; ``start_at(k)`` makes the next pass begin at window k.

    A run resumed mid-epoch calls ``start_at`` with the number of windows its checkpoint had finished
    in that epoch. ``state_dict`` is what Lightning saves in checkpoints for a resumable loader (and it
    then continues ``batch_idx`` mid-epoch); here it guards against resuming with other windows. The
    position itself is the task's count of windows trained, not a count kept here: when Lightning ends an
    epoch early (``trainer.limit_train_batches``, ``max_steps``) the loader has not run out, and its count
    would read as a run stopped mid-epoch (tests/test_resume.py shows it).
    ``epoch_windows`` (variable-length BPTT) gives each epoch its own windows; ``set_epoch`` picks them.
    """

    def __init__(self, windows: BPTTWindows, pin_memory: bool = False,
                 epoch_windows: Callable[[int], BPTTWindows] | None = None):
        self.dataset = windows
        self.pin_memory = pin_memory
        self.epoch_windows = epoch_windows
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        if self.epoch_windows is not None:
            self.dataset = self.epoch_windows(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def start_at(self, window: int) -> None:
        self._start = window

    def __iter__(self):
        # A generator: the start is read at the first next(), after the epoch-start hooks ran.
        start, self._start = self._start, 0
        for i in range(start, len(self.dataset)):
            x, y = self.dataset[i]
            yield (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)

    def state_dict(self) -> dict:
        return {"windows": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["windows"] != len(self.dataset):
            raise ConfigError(
                f"the checkpoint was saved with {state['windows']} training windows per epoch, this run has "
                f"{len(self.dataset)}: resume with the same data, data.batch_size and data.bptt."
            )


class CorpusDataModule(pl.LightningDataModule):
    """Train/valid/test splits of a word corpus as BPTT windows.

    ``data_dir`` holds ``ptb.{train,valid,test}.txt`` or ``{train,valid,test}.txt``, or the names
    given in ``files``. When they are absent and ``download`` is on, ``prepare_data`` fetches
    ``<url>/<name>`` for every file named in ``sha256`` (``url`` may list mirrors, tried in order),
    checks it, and takes the split files out of any ``.zip`` among them. Under DDP each rank takes
    its own contiguous slice of the B streams, so the ranks together see exactly the single-process
    data.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        bptt: int = 35,
        download: bool = False,
        url: str | list[str] | None = None,
        sha256: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        dir_env: str = "PTB_DIR",
        variable_bptt: bool = False,
        bptt_std: float = 5.0,
        bptt_half_prob: float = 0.05,
        seed: int = 0,
    ):
        super().__init__()
        if not bptt_std >= 0 or not 0 <= bptt_half_prob <= 1:
            raise ConfigError(f"data.bptt_std must be >= 0 and data.bptt_half_prob in [0, 1], got {bptt_std} "
                              f"and {bptt_half_prob}.")
        self.variable_bptt = variable_bptt
        self.bptt_std = bptt_std
        self.bptt_half_prob = bptt_half_prob
        self.seed = seed
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("bptt", bptt)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"data.{name} must be a positive integer, got {value!r}.")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.bptt = bptt
        self.download = download
        self.urls = [url] if isinstance(url, str) else list(url or [])
        self.sha256 = dict(sha256 or {})
        if files is not None and set(files) != set(SPLITS):
            raise ConfigError(f"data.files must name exactly the splits {SPLITS}, got {sorted(files)}.")
        self.files = dict(files) if files is not None else None
        self.dir_env = dir_env
        self.vocab: Vocabulary | None = None
        self.oov: dict[str, Counter] = {}
        self._ids: dict[str, torch.Tensor] = {}
        self._streams: dict[str, torch.Tensor] = {}

    # -- files ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        missing = self._missing_splits()
        if missing and self.download and self.urls and self.sha256:
            for name, digest in self.sha256.items():
                dest = self.data_dir / name
                if not dest.is_file():
                    self._fetch(name, dest, digest)
                if name.endswith(".zip"):
                    extract(dest, list((self.files or {}).values()), self.data_dir)
            missing = self._missing_splits()
        if missing:
            raise DataError(f"missing split(s) {', '.join(missing)} in {self.data_dir}.\n{self._where_to_put_files()}")
        self._verify_checksums()

    def split_paths(self) -> dict[str, Path | None]:
        """Each split's file in ``data_dir`` (see ``split_path``), None where it is missing."""
        return {s: split_path(self.data_dir, s, self.files) for s in SPLITS}

    def _missing_splits(self) -> list[str]:
        return [s for s, path in self.split_paths().items() if path is None]

    def _fetch(self, name: str, dest: Path, digest: str) -> None:
        failures = []
        for base in self.urls:
            url = base.rstrip("/") + "/" + name
            log.info("downloading %s", url)
            try:
                return download(url, dest, digest)
            except DataError as exc:
                failures.append(str(exc))
        raise DataError("\n".join(failures) + f"\n{self._where_to_put_files()}")

    def _where_to_put_files(self) -> str:
        names = ", ".join(self.files.values()) if self.files else (
            "ptb.train.txt, ptb.valid.txt and ptb.test.txt (or train.txt, valid.txt, test.txt)")
        return (
            f"Put {names} in {self.data_dir.resolve()}, or point the setting data.data_dir (or the environment "
            f"variable {self.dir_env}) at the folder that holds them."
        )

    def _verify_checksums(self) -> None:
        for name, digest in self.sha256.items():
            path = self.data_dir / name
            if path.is_file() and sha256_of(path) != digest:
                raise DataError(
                    f"{path} does not match its known SHA-256 ({digest}): the file is corrupt or modified. "
                    f"Delete it to download it again, or add data.sha256=null to the command to use a different corpus."
                )

    # -- tensors ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.vocab is None:
            self._read()
        # Re-sliced on every call: the same module may be set up first alone, then under DDP.
        rank, world = self._rank_and_world()
        for split, ids in self._ids.items():
            batch = self.batch_size if split == "train" else self.eval_batch_size
            self._streams[split] = self._shard(batchify(ids, batch), rank, world, split)
            self._check_fills_one_window(split, ids.numel(), batch)

    def _read(self) -> None:
        paths = self.split_paths()
        if any(p is None for p in paths.values()):
            self.prepare_data()
            paths = self.split_paths()
        lines = {s: read_lines(p) for s, p in paths.items()}
        self.vocab = Vocabulary.from_lines(lines["train"])
        self._ids = {}
        for split in SPLITS:
            self._ids[split], self.oov[split] = self.vocab.encode(lines[split])
            if self.oov[split]:
                n = sum(self.oov[split].values())
                log.info("%s: %d tokens of %d unseen words mapped to %s", split, n, len(self.oov[split]), UNK)
        log.info("vocabulary %d words; tokens: %s", len(self.vocab), {s: t.numel() for s, t in self._ids.items()})

    def _check_fills_one_window(self, split: str, tokens: int, batch: int) -> None:
        if self._streams[split].size(0) < self.bptt + 1:
            raise DataError(
                f"the {split} split has {tokens} tokens, fewer than one batch of windows needs "
                f"({batch} streams x {self.bptt + 1} steps = {batch * (self.bptt + 1)}). Use a larger corpus, "
                f"or a smaller data.{'batch_size' if split == 'train' else 'eval_batch_size'} or data.bptt."
            )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    @staticmethod
    def _shard(streams: torch.Tensor, rank: int, world: int, split: str) -> torch.Tensor:
        """This rank's contiguous slice of the streams. Training needs equal slices (DDP averages the
        ranks' gradients with equal weight); evaluation takes uneven ones (10 streams on 4 processes:
        3, 3, 2, 2), every rank stepping through the same windows, and the perplexity sums tokens."""
        if world == 1:
            return streams
        num = streams.size(1)
        if split == "train" and num % world:
            below = num // world * world
            fits = [m for m in (below, below + world) if m > 0]
            raise ConfigError(
                f"data.batch_size={num} does not divide among the {world} DDP processes; set it to a multiple "
                f"of {world}, e.g. data.batch_size={' or data.batch_size='.join(map(str, fits))}."
            )
        if num < world:
            raise ConfigError(
                f"data.eval_batch_size={num} gives fewer evaluation streams than the {world} DDP processes; "
                f"set data.eval_batch_size={world} or more."
            )
        start, end = rank * num // world, (rank + 1) * num // world
        return streams[:, start:end].contiguous()

    @property
    def vocab_size(self) -> int:
        if self.vocab is None:
            raise RuntimeError("call setup() before asking for the vocabulary size")
        return len(self.vocab)

    def windows(self, split: str) -> BPTTWindows:
        return BPTTWindows(self._streams[split], self.bptt)

    def epoch_windows(self, epoch: int) -> BPTTWindows:
        """The training windows of ``epoch`` under variable-length BPTT."""
        streams = self._streams["train"]
        starts = variable_starts(streams.size(0) - 1, self.bptt, epoch, self.seed, self.bptt_std, self.bptt_half_prob)
        return BPTTWindows(streams, self.bptt, starts)

    def _loader(self, split: str) -> WindowLoader:
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self._streams[split], pin = place_streams(self._streams[split], device)
        variable = self.epoch_windows if split == "train" and self.variable_bptt else None
        return WindowLoader(self.windows(split), pin_memory=pin, epoch_windows=variable)

    def train_dataloader(self) -> WindowLoader:
        return self._loader("train")

    def val_dataloader(self) -> WindowLoader:
        return self._loader("valid")

    def test_dataloader(self) -> WindowLoader:
        return self._loader("test")
