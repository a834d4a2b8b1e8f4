"""What the paper argues with: how close W is to the span of L, what y~ credits, what the model predicts."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from lm.checkpoint import load_checkpoint, model_state
from lm.errors import ConfigError, DataError
from lm.model import LSTMLanguageModel


def subspace_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Distance between the column spaces of two (V, d) matrices, in [0, 1].

    ``1 - ||Qa^T Qb||_F^2 / min(da, db)`` with Qa, Qb orthonormal bases: 0 when one span contains
    the other, 1 when they are orthogonal. The paper (Section 6.2) uses it to show that the augmented
    loss moves an untied classifier W toward the space spanned by the embedding L.
    """
    qa = torch.linalg.qr(a.detach().double()).Q
    qb = torch.linalg.qr(b.detach().double()).Q
    overlap = (qa.t() @ qb).pow(2).sum()
    return float(1.0 - overlap / min(qa.size(1), qb.size(1)))


def target_neighbors(embedding: torch.Tensor, vocab: list[str], word: str, k: int = 10, tau: float = 1.0):
    """The k words with the highest target probability y~ = softmax(L L[word] / tau), with that probability."""
    index = {w: i for i, w in enumerate(vocab)}
    if word not in index:
        raise DataError(f"{word!r} is not in the checkpoint's vocabulary of {len(vocab)} words.")
    emb = embedding.detach().float()
    probs = torch.softmax(emb @ emb[index[word]] / tau, dim=0)
    top = probs.topk(min(k, len(vocab)))
    return [(vocab[i], float(p)) for p, i in zip(top.values, top.indices)]


def load_model(ckpt_path: str | Path) -> tuple[LSTMLanguageModel, list[str]]:
    """The trained model (eval mode) and its vocabulary, from a checkpoint written by train.py."""
    checkpoint = load_checkpoint(ckpt_path)
    if "model_config" not in checkpoint or "vocab" not in checkpoint:
        raise DataError(f"{ckpt_path} lacks the model settings or vocabulary; it was written by an older version.")
    vocab = checkpoint["vocab"]
    model = instantiate(checkpoint["model_config"], vocab_size=len(vocab))
    model.load_state_dict(model_state(checkpoint))
    return model.eval(), vocab


@torch.no_grad()
def predict_next(model: LSTMLanguageModel, vocab: list[str], text: str, k: int = 10) -> list[tuple[str, float]]:
    """The k most probable next words after ``text`` (words outside the vocabulary read as <unk>)."""
    index = {w: i for i, w in enumerate(vocab)}
    words = text.split()
    if not words:
        raise ConfigError("give at least one word of context.")
    unk = index.get("<unk>")
    ids = [index.get(w, unk) for w in words]
    if None in ids:
        raise DataError(f"{words[ids.index(None)]!r} is not in the vocabulary, which has no <unk>.")
    tokens = torch.tensor(ids, device=model.embedding.weight.device)[:, None]  # (T, 1)
    logits, _ = model(tokens, model.init_hidden(1))
    probs = torch.softmax(logits[-1, 0].float(), dim=-1)
    top = probs.topk(min(k, len(vocab)))
    return [(vocab[i], float(p)) for p, i in zip(top.values, top.indices)]
