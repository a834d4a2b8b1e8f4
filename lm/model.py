"""The language model: embedding -> 2-layer LSTM with variational dropout -> word classifier.

Shapes are time-major, as cuDNN prefers: tokens (T, B) -> embeddings (T, B, d) -> logits (T, B, V).

Dropout, all off by default (``conf/size/*.yaml`` sets the paper's ``dropout_state``; the
``tuned_small_*`` presets use the others instead):
- ``dropout_emb``, ``dropout_hidden``, ``dropout_out``: locked (variational) masks on the inputs and
  outputs of each LSTM layer, the paper's VD-LSTM;
- ``dropout_words``: whole words, as Gal & Ghahramani's embedding dropout: a dropped word's vector is
  zero at every occurrence in the batch;
- ``dropout_recurrent``: on the recurrent weights W_hh of each layer (DropConnect, one mask per
  batch, so every step of the sequence sees the same dropped connections); keeps cuDNN's fused LSTM;
- ``dropout_state``: the paper's form (its Appendix A). One mask per sequence and unit on each layer's
  output h_t, applied both where h_t is carried to the layer's next step and where it feeds the next
  layer or the classifier. Training runs ``lm.lstm.masked_lstm``, which gets nn.LSTM's fused kernel to
  apply the mask; evaluation (no mask) runs nn.LSTM as it is. The parameters are nn.LSTM's either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lm.errors import ConfigError
from lm.lstm import masked_lstm

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
        dropout_words: float = 0.0,
        dropout_recurrent: float = 0.0,
        dropout_state: float = 0.0,
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
        rates = dict(dropout_emb=dropout_emb, dropout_hidden=dropout_hidden, dropout_out=dropout_out,
                     dropout_words=dropout_words, dropout_recurrent=dropout_recurrent,
                     dropout_state=dropout_state)
        for name, p in rates.items():
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {p}.")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.tie_weights = tie_weights
        self.dropout_words = dropout_words
        self.dropout_recurrent = dropout_recurrent
        self.dropout_state = dropout_state
        if dropout_state > 0 and dropout_recurrent > 0:
            raise ConfigError(
                "model.dropout_state and model.dropout_recurrent both drop the recurrent path; set one of them to 0."
            )

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

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word vectors (T, B, d), with word dropout while training."""
        x = self.embedding(tokens)
        if self.training and self.dropout_words > 0:
            # One keep/drop draw per vocabulary word, looked up per token: the same as masking the
            # embedding matrix's rows (Gal & Ghahramani), without touching the |V| x d matrix.
            keep = x.new_empty(self.vocab_size).bernoulli_(1.0 - self.dropout_words) / (1.0 - self.dropout_words)
            x = x * keep[tokens].unsqueeze(-1)
        return x

    def run_layer(self, lstm: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One LSTM layer over the window; with recurrent dropout, on a masked copy of W_hh; with state
        dropout, through ``masked_lstm`` with one mask for the window."""
        if self.training and self.dropout_state > 0:
            h, c = state[0][0], state[1][0]
            keep = h.new_empty(h.shape).bernoulli_(1.0 - self.dropout_state)
            out, h, c = masked_lstm(x, h, c, keep, self.dropout_state, lstm.weight_ih_l0, lstm.weight_hh_l0,
                                    lstm.bias_ih_l0, lstm.bias_hh_l0)
            return out, (h.unsqueeze(0), c.unsqueeze(0))
        if not (self.training and self.dropout_recurrent > 0):
            return lstm(x, state)
        # The Parameter stays untouched (the optimizer steps it); its gradient is the masked one.
        w_hh = F.dropout(lstm.weight_hh_l0, self.dropout_recurrent, training=True)
        return functional_call(lstm, {"weight_hh_l0": w_hh}, (x, state))

    def forward(self, tokens: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        x = self.drop_emb(self.embed(tokens))  # (T, B, d)
        new_hidden = []
        # The recurrent layers run in float32 (TF32 on GPUs that have it) under any autocast: CUDA autocast
        # would run cuDNN's LSTM in fp16 whatever dtype it was asked for, without loss scaling, and the
        # carried state would round at every step. The classifier, where the time goes, keeps autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            for i, lstm in enumerate(self.lstms):
                state = (hidden[i][0].float(), hidden[i][1].float())  # a state saved at another precision too
                x, state = self.run_layer(lstm, x, state)  # (T, B, hidden_size)
                new_hidden.append(state)
                x = self.drop_hidden(x) if i < len(self.lstms) - 1 else self.drop_out(x)
        return self.decoder(x), new_hidden  # (T, B, V)

    def num_parameters(self) -> int:
        """Distinct trainable parameters: a tied matrix counts once."""
        return sum(p.numel() for p in self.parameters())


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at the window boundary (truncated BPTT) but keep the values."""
    return [(h.detach(), c.detach()) for h, c in hidden]
