"""What the paper argues with: how close W is to the span of L, what y~ credits, what the model predicts
and how sharply."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from lm.checkpoint import load_checkpoint, model_state
from lm.data import BPTTWindows, Vocabulary, batchify, read_lines
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
    index = Vocabulary(vocab).stoi.get(word)
    if index is None:
        raise DataError(f"{word!r} is not in the checkpoint's vocabulary of {len(vocab)} words.")
    emb = embedding.detach().float()
    probs = torch.softmax(emb @ emb[index] / tau, dim=0)
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


def read_text(path: Path, vocab: list[str], option: str) -> torch.Tensor:
    """Token ids of a text file in a checkpoint's vocabulary (words outside it read as ``<unk>``)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; {option} needs a text file such as ptb.valid.txt.")
    ids, _ = Vocabulary(vocab).encode(read_lines(path))  # read_lines rejects an empty file
    return ids


@torch.no_grad()
def target_axis(embedding: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """How much of y~ one direction of L decides, averaged over words w weighted by ``counts`` (V,).

    y~'s logits for w are L L[w] / tau; across the vocabulary they vary by L[w]^T C L[w] / tau^2, with C
    the covariance of L's rows. ``logits``: the share of that variance along C's first eigenvector (1: y~
    orders the vocabulary by one coordinate whatever w is, so it credits no particular similar words;
    tau scales all axes alike and cancels). ``variance``: that axis's share of C's trace. ``frequency``:
    |correlation| between the words' coordinates on it and log(1 + count).
    """
    emb = embedding.detach().double()
    eigvals, eigvecs = torch.linalg.eigh(torch.cov(emb.t(), correction=0))  # ascending
    coords = emb @ eigvecs  # (V, d): each word on each principal axis
    per_axis = coords.pow(2) * eigvals  # variance of y~'s logits (x tau^2) along each axis, for each w
    weights = counts.double() / counts.sum()
    frequency = torch.corrcoef(torch.stack([coords[:, -1], counts.double().log1p()]))[0, 1]
    return {
        "logits": float(weights @ per_axis[:, -1] / (weights @ per_axis.sum(1))),
        "variance": float(eigvals[-1] / eigvals.sum()),
        "frequency": float(frequency.abs()),
    }


@torch.no_grad()
def target_spread(embedding: torch.Tensor, counts: torch.Tensor, tau: float, k: int = 10) -> dict[str, float]:
    """Where y~ = softmax(L L[w] / tau) puts its mass, averaged over words w weighted by ``counts`` (V,):
    on w itself, on the k other words nearest to w, and its entropy in nats.

    Tells what the augmented term does at this tau: mostly mass on w repeats cross-entropy, mass on
    near words credits them (the paper's aim), mass spread thin over the vocabulary is label smoothing.
    """
    emb = embedding.detach().float()
    words = counts.nonzero().squeeze(1)
    weights = counts[words].double() / counts[words].sum()
    self_mass = near_mass = entropy = 0.0
    for start in range(0, len(words), 1024):  # (1024, V) blocks: a (V, V) matrix can be gigabytes
        ids, w = words[start:start + 1024], weights[start:start + 1024]
        log_p = torch.log_softmax(emb[ids] @ emb.t() / tau, dim=1)
        p = log_p.exp()
        self_p = p[torch.arange(len(ids)), ids]
        others = p.scatter(1, ids[:, None], 0.0).topk(min(k, p.size(1) - 1), dim=1).values.sum(1)
        self_mass += float((self_p.double() * w).sum())
        near_mass += float((others.double() * w).sum())
        entropy += float((-(p * log_p).sum(1).double() * w).sum())
    return {"self": self_mass, "near": near_mass, "entropy": entropy}


@torch.no_grad()
def predict_next(model: LSTMLanguageModel, vocab: list[str], text: str, k: int = 10) -> list[tuple[str, float]]:
    """The k most probable next words after ``text`` (words outside the vocabulary read as <unk>)."""
    words = text.split()
    if not words:
        raise ConfigError("give at least one word of context.")
    ids, _ = Vocabulary(vocab).encode([words])  # words outside it read as <unk>
    tokens = ids.to(model.embedding.weight.device)[:, None]  # (T, 1)
    logits, _ = model(tokens, model.init_hidden(1))
    probs = torch.softmax(logits[-1, 0].float(), dim=-1)
    top = probs.topk(min(k, len(vocab)))
    return [(vocab[i], float(p)) for p, i in zip(top.values, top.indices)]


def tempered_losses(logits: torch.Tensor, targets: torch.Tensor, temps: list[float]) -> tuple[torch.Tensor, float]:
    """For logits (N, V) and targets (N,): the summed cross-entropy of softmax(logits / T) for each T in
    ``temps`` (float64, (len(temps),)), and the summed entropy of softmax(logits) in nats."""
    z = logits.float()
    log_p = torch.log_softmax(z, dim=-1)  # T = 1: shared by its cross-entropy and the entropy
    ce = torch.stack([F.nll_loss(log_p if t == 1.0 else torch.log_softmax(z / t, dim=-1), targets, reduction="sum")
                      for t in temps]).double()
    return ce, float(-(log_p.exp() * log_p).sum(dtype=torch.float64))


def _read_as_validation(model: LSTMLanguageModel, ids: torch.Tensor, streams: int, bptt: int):
    """(logits (N, V), targets (N,)) window by window, read as validation reads a split: ``streams``
    parallel streams, windows of ``bptt``, the state carried from window to window."""
    data = batchify(ids, streams)
    if data.size(0) < 2:
        raise DataError(f"the text has {ids.numel()} tokens, too few for {streams} streams; give a longer text "
                        "or fewer streams.")
    device = model.embedding.weight.device
    hidden = model.init_hidden(streams)
    for x, y in BPTTWindows(data, bptt):
        logits, hidden = model(x.to(device), hidden)
        yield logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1).to(device)


@torch.no_grad()
def calibration(model: LSTMLanguageModel, ids: torch.Tensor, temps: list[float], streams: int = 10,
                bptt: int = 35, pull: tuple[float, float] | None = None) -> dict:
    """How sharp the model's predictions are over a token sequence, read as validation reads a split.

    Returns the number of predicted tokens, the mean entropy of softmax(z) and the mean cross-entropy
    (nats), and ``perplexity``: {T: perplexity of softmax(z / T)} for T = 1 and each of ``temps``.
    A calibrated model's entropy equals its cross-entropy on average; entropy below cross-entropy and
    a lower perplexity at some T > 1 mean over-confident predictions, the opposite under-confident ones.
    With ``pull`` = (alpha, tau), also ``pull``: ``augmented_pull``'s figures, from the same pass.
    """
    temps = sorted({1.0, *temps})
    ce_sums = torch.zeros(len(temps), dtype=torch.float64)
    pulls = torch.zeros(3, dtype=torch.float64)
    entropy_sum, count = 0.0, 0
    for logits, targets in _read_as_validation(model, ids, streams, bptt):
        ce, entropy = tempered_losses(logits, targets, temps)
        ce_sums += ce.cpu()
        entropy_sum += entropy
        count += targets.numel()
        if pull is not None:
            pulls += pull_sums(logits, targets, model.decoder.weight, model.embedding.weight, *pull).cpu()
    means = ce_sums / count
    result = {
        "tokens": count,
        "entropy": entropy_sum / count,
        "cross_entropy": float(means[temps.index(1.0)]),
        "perplexity": {t: float(m.exp()) for t, m in zip(temps, means)},
    }
    if pull is not None:
        result["pull"] = pull_from_sums(pulls)
    return result


@torch.no_grad()
def pull_sums(logits: torch.Tensor, targets: torch.Tensor, classifier: torch.Tensor, target_embedding: torch.Tensor,
              alpha: float, tau: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """For logits (N, V) and targets (N,): the sums over the N tokens of |aug|^2, |ce|^2 and <aug, ce>
    (float64, (3,)), where ce and aug are cross-entropy's and the augmented term's gradients on the
    classifier's input, the top LSTM layer's output.

    Per token, the two gradients on the logits (docs/method.md) are softmax(z) - onehot(y*) and
    alpha * (y^ - y~), with y^ = softmax((z - bias) / tau) (no ``bias``: the bias stays in y^, as the
    presets have it) and y~ = softmax(L L[y*] / tau), L being ``target_embedding``; times the classifier
    W (V, d), they are the gradients on its input.
    """
    z = logits.float()
    w = classifier.float()
    emb = target_embedding.float()
    ce = torch.softmax(z, dim=-1) @ w - w[targets]  # onehot(y*) W is W's row y*
    pred = torch.softmax((z if bias is None else z - bias.float()) / tau, dim=-1)
    words, inverse = targets.unique(return_inverse=True)  # y~ W once per distinct target word
    target_w = torch.softmax(emb[words] @ emb.t() / tau, dim=-1) @ w  # (U, d)
    aug = alpha * (pred @ w - target_w[inverse])
    return torch.stack([aug.pow(2).sum(), ce.pow(2).sum(), (aug * ce).sum()]).double()


def pull_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """``ratio``: the norm of the augmented term's gradient over cross-entropy's, pooled over the tokens
    of ``pull_sums``; ``cosine``: how far the two point the same way."""
    aug, ce, dot = (float(v) for v in sums)
    return {"ratio": (aug / ce) ** 0.5, "cosine": dot / (aug * ce) ** 0.5 if aug > 0 else 0.0}


def augmented_pull(model: LSTMLanguageModel, ids: torch.Tensor, alpha: float, tau: float, streams: int = 10,
                   bptt: int = 35) -> dict[str, float]:
    """How hard the augmented term (the presets' form) pulls on the model's output over a token sequence,
    against cross-entropy, read as validation reads a split: ``pull_from_sums`` of ``pull_sums``."""
    return calibration(model, ids, [], streams, bptt, pull=(alpha, tau))["pull"]
