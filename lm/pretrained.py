"""Initialise the embedding from pre-trained word vectors (word2vec or GloVe text format).

One word per line, then its components, separated by spaces; word2vec files start with a
"<count> <dimension>" header line, GloVe files do not. Only the model's vocabulary is kept, so a
multi-gigabyte file costs one pass and no memory beyond the matched rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lm.errors import ConfigError, DataError

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
