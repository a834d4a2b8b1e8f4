"""Corpus perplexity: exp of the token-weighted mean cross-entropy over a whole split."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class Perplexity(Metric):
    """Sums token losses and token counts (float64, summed across DDP ranks) and exponentiates once.

    Averaging per-batch perplexities, or per-batch means, would weight a short last window like a
    full one; this is exact.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self):
        super().__init__()
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mean_nll: torch.Tensor, tokens: int) -> None:
        self.nll_sum += mean_nll.detach().double() * tokens
        self.tokens += tokens

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.tokens)
