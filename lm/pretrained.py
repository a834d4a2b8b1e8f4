"""Pre-trained word vectors: initialise the embedding from a word2vec or GloVe text file, and train
word2vec vectors on a training split (scripts/vectors.py).

One word per line, then its components, separated by spaces; word2vec files start with a
"<count> <dimension>" header line, GloVe files do not. Only the model's vocabulary is kept, so a
multi-gigabyte file costs one pass and no memory beyond the matched rows.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import torch

from lm.errors import ConfigError, DataError
from lm.files import atomic_write

log = logging.getLogger(__name__)


def read_vectors(path: str | Path, vocab: list[str], dim: int) -> dict[int, torch.Tensor]:
    """Vectors of the vocabulary words found in ``path``, by vocabulary index."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"model.pretrained_vectors: {path} does not exist. Give the path of a word2vec or GloVe "
                        "text file, or set model.pretrained_vectors=null.")
    index = {w: i for i, w in enumerate(vocab)}
    found: dict[int, torch.Tensor] = {}
    dim_checked = False  # against the header, or else the first vector
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                parts = line.rstrip().split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    _check_dim(int(parts[1]), dim, path)  # word2vec header: "<count> <dimension>"
                    dim_checked = True
                    continue
                if len(parts) < 2:
                    continue  # a blank line
                if not dim_checked:
                    _check_dim(len(parts) - 1, dim, path)
                    dim_checked = True
                if len(parts) - 1 < dim:
                    raise DataError(f"{path} line {number} has {len(parts) - 1} components, not {dim}: "
                                    "the file is truncated or not a word2vec/GloVe text file.")
                word = " ".join(parts[: len(parts) - dim])  # GloVe has a few words with spaces
                i = index.get(word)
                if i is not None and i not in found:
                    try:
                        found[i] = torch.tensor([float(v) for v in parts[-dim:]])
                    except ValueError as exc:
                        raise DataError(f"{path} line {number}: {exc}; is this a word2vec/GloVe text file?") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}). Binary word2vec files must be converted to the "
                        "text format first.") from exc
    return found


def _check_dim(file_dim: int, dim: int, path: Path) -> None:
    if file_dim != dim:
        raise ConfigError(
            f"the vectors in {path} have {file_dim} components, but model.emb_size is {dim}. Set "
            f"model.emb_size={file_dim} (and model.hidden_size={file_dim} for model=tied), or use {dim}-d vectors."
        )


def init_embedding(embedding: torch.nn.Embedding, path: str | Path, vocab: list[str]) -> int:
    """Copy the vectors found in ``path`` into ``embedding``; the other words keep their random init.
    Returns how many words were found."""
    found = read_vectors(path, vocab, embedding.embedding_dim)
    if not found:
        raise DataError(f"{path} has no vector for any of the {len(vocab)} vocabulary words: wrong file? "
                        "(Words are matched exactly, case included.)")
    rows = torch.tensor(sorted(found))
    with torch.no_grad():
        embedding.weight[rows] = torch.stack([found[i] for i in rows.tolist()]).to(embedding.weight)
    log.info("pretrained vectors from %s: %d of %d words found; %d keep the random init",
             path, len(found), len(vocab), len(vocab) - len(found))
    return len(found)


def _stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector from this hash: Python's own ``hash`` of a string changes
    from one process to the next (PYTHONHASHSEED), which would make the vectors differ between runs."""
    return zlib.crc32(text.encode("utf-8"))


def train_word2vec(lines: list[list[str]], vector_size: int, sg: int = 1, window: int = 5, min_count: int = 1,
                   negative: int = 5, epochs: int = 10, seed: int = 1234, workers: int = 1) -> dict[str, list[float]]:
    """Word2vec vectors (gensim; skip-gram with sg=1) of every word of ``lines`` seen ``min_count`` times.
    With one worker thread the result depends only on the arguments."""
    try:
        from gensim.models import Word2Vec
    except ImportError as exc:
        raise ConfigError('training word2vec vectors needs gensim: pip install -e ".[vectors]"') from exc
    model = Word2Vec(sentences=lines, vector_size=vector_size, sg=sg, window=window, min_count=min_count,
                     negative=negative, epochs=epochs, seed=seed, workers=workers, hashfxn=_stable_hash)
    return {word: model.wv[word].tolist() for word in model.wv.index_to_key}


def write_vectors(path: str | Path, vectors: dict[str, list[float]]) -> None:
    """The word2vec text format ``read_vectors`` reads: a "<count> <dimension>" header, then one word and
    its components per line."""
    dim = len(next(iter(vectors.values())))
    with atomic_write(path, "w") as f:
        f.write(f"{len(vectors)} {dim}\n")
        for word, vector in vectors.items():
            f.write(word + " " + " ".join(f"{v:.6g}" for v in vector) + "\n")
