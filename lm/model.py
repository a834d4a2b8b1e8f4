"""The language model: embedding -> 2-layer LSTM with variational dropout -> word classifier.

Shapes are time-major, as cuDNN prefers: tokens (T, B) -> embeddings (T, B, d) -> logits (T, B, V).
"""

from __future__ import annotations

import torch
from torch import nn

from lm.errors import ConfigError

Hidden = list[tuple[torch.Tensor, torch.Tensor]]  # one (h, c) per layer, each (1, B, hidden_size)


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence and feature, reused at every time step."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {p}.")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, d)
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * mask


class LSTMLanguageModel(nn.Module):
    """Stacked LSTM language model; ``tie_weights`` makes the classifier reuse the embedding (RE).

    Each layer is its own ``nn.LSTM`` (cuDNN on GPU) so that a locked dropout mask can sit between
    layers; ``nn.LSTM``'s built-in dropout draws a new mask at every step.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout_emb: float = 0.0,
        dropout_hidden: float = 0.0,
        dropout_out: float = 0.0,
        init_range: float = 0.1,
        tie_weights: bool = False,
        output_bias: bool = True,
    ):
        super().__init__()
        if tie_weights and emb_size != hidden_size:
            raise ConfigError(
                f"model=tied needs model.emb_size == model.hidden_size (got {emb_size} and {hidden_size}): "
                "the classifier reuses the embedding matrix. Set both to the same size, or use model=untied."
            )
        if num_layers < 1 or emb_size < 1 or hidden_size < 1:
            raise ConfigError("model.num_layers, model.emb_size and model.hidden_size must be positive.")
        for name, p in (("dropout_emb", dropout_emb), ("dropout_hidden", dropout_hidden), ("dropout_out", dropout_out)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {p}.")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.tie_weights = tie_weights

        self.embedding = nn.Embedding(vocab_size, emb_size)
        sizes = [emb_size] + [hidden_size] * num_layers
        self.lstms = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(num_layers))
        self.drop_emb = LockedDropout(dropout_emb)
        self.drop_hidden = LockedDropout(dropout_hidden)
        self.drop_out = LockedDropout(dropout_out)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=output_bias)
        self._init_weights(init_range)
        if tie_weights:
            self.decoder.weight = self.embedding.weight  # one tensor, one gradient: W = L

    def _init_weights(self, r: float) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -r, r)
        if self.decoder.bias is not None:
            nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size: int) -> Hidden:
        w = self.embedding.weight
        return [
            (w.new_zeros(1, batch_size, lstm.hidden_size), w.new_zeros(1, batch_size, lstm.hidden_size))
            for lstm in self.lstms
        ]

    def forward(self, tokens: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        x = self.drop_emb(self.embedding(tokens))  # (T, B, d)
        new_hidden = []
        for i, lstm in enumerate(self.lstms):
            x, state = lstm(x, hidden[i])  # (T, B, hidden_size)
            new_hidden.append(state)
            x = self.drop_hidden(x) if i < len(self.lstms) - 1 else self.drop_out(x)
        return self.decoder(x), new_hidden  # (T, B, V)

    def num_parameters(self) -> int:
        """Distinct trainable parameters: a tied matrix counts once."""
        return sum(p.numel() for p in self.parameters())


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at the window boundary (truncated BPTT) but keep the values."""
    return [(h.detach(), c.detach()) for h, c in hidden]
