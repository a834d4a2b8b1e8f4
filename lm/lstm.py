"""The LSTM layer of the paper's dropout: h_t times one mask per sequence, where it feeds the next step and
where it leaves the layer (lm/model.py, ``dropout_state``), run by nn.LSTM's fused kernel.

The kernel has no hook for a mask on its recurrent state, but it computes this layer exactly after two
substitutions. Up to the window's last step a dropped unit's output gate is shut: extra input columns add
-1e4 to its pre-activation, so o_t = 0, h_t = 0 and the derivative through o are exact zeros, and the kept
units' 1/(1-p) moves into W_hh. At the last step nothing is shut, so the kernel's final h is the unmasked
one that the next window needs, and the mask on the outputs (for the next layer) is applied after the
kernel. Autograd differentiates all of it, so the backward is the kernel's own (cuDNN on GPU, oneDNN on CPU).
"""

from __future__ import annotations

import torch

SHUT = -1e4  # sigmoid(SHUT + z) and its derivative are exactly 0 in float16, bfloat16, float32 and float64


def masked_lstm(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, keep: torch.Tensor, p: float,
                w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
                b_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (T, B, d); h, c (B, H) carried in unmasked; keep (B, H), 1 for a kept unit and 0 for a dropped one;
    p the drop rate; nn.LSTM's weights. With mask = keep / (1 - p), returns the outputs h_t * mask (T, B, H)
    and the unmasked final (h, c), which the next window masks with its own draw."""
    steps, b = x.shape[:2]
    n = h.size(1)
    keep = keep.to(x.dtype)
    scale = 1.0 / (1.0 - p)
    # W_ih gets B more columns, which feed the output gates only: column j holds SHUT for each unit that
    # sequence j drops and 0 for one it keeps. The input gets B more features, sequence j's one-hot at every
    # step but the last. B columns rather than an H x H identity keep the extra work small (B = 20, H >= 200).
    shut = torch.cat((w_ih.new_zeros(3 * n, b), (1.0 - keep).t() * SHUT))
    onehot = x.new_zeros(steps, b, b)
    onehot[:-1] = torch.eye(b, dtype=x.dtype, device=x.device)
    out, h_last, c_last = torch.lstm(torch.cat((x, onehot), dim=2), ((h * keep)[None], c[None]),
                                     [torch.cat((w_ih, shut), dim=1), w_hh * scale, b_ih, b_hh],
                                     # biases, layers, dropout, train, bidirectional, batch_first
                                     True, 1, 0.0, True, False, False)
    # Before the last step the dropped units' h_t are already 0; at the last step they are not. One multiply
    # by the mask zeroes them and scales the kept units at every step.
    return out * (keep * scale), h_last[0], c_last[0]
