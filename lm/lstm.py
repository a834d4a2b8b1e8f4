"""The LSTM layer of the paper's dropout: h_t times one mask per sequence, where it feeds the next step
and where it leaves the layer (lm/model.py, ``dropout_state``), run by nn.LSTM's fused kernel.

The kernel has no hook for a mask on its recurrent state, but it computes this layer exactly after three
substitutions. A dropped unit's output gate is shut: extra input columns add -1e4 to its pre-activation,
so o_t = 0, h_t = 0 and the derivative through o are exact zeros. The kept units' 1/(1-p) then moves into
W_hh (for the next step) and onto the outputs (for the next layer). The final h, which leaves unmasked for
the next window, is o_T * tanh(c_T) with o_T recomputed by one small product. Autograd differentiates all
of it, so the backward is the kernel's own (cuDNN on GPU, oneDNN on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHUT = -1e4  # sigmoid(SHUT + z) and its derivative are exactly 0 in float16, bfloat16, float32 and float64


def masked_lstm(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, keep: torch.Tensor, p: float,
                w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
                b_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (T, B, d); h, c (B, H) carried in unmasked; keep (B, H), 1 for a kept unit and 0 for a dropped one;
    p the drop rate; nn.LSTM's weights. With mask = keep / (1 - p), returns the outputs h_t * mask (T, B, H)
    and the unmasked final (h, c), which the next window masks with its own draw."""
    n = h.size(1)
    keep = keep.to(x.dtype)
    scale = 1.0 / (1.0 - p)
    # W_ih gets B more columns, which feed the output gates only: column b holds SHUT for each unit that
    # sequence b drops and 0 for one it keeps. The input gets B more features, sequence b's one-hot, constant
    # over time. B columns rather than an H x H identity keep the extra work small (B = 20, H >= 200).
    b = x.size(1)
    w_in = F.pad(w_ih, (0, b))
    w_in[3 * n:, -b:] = (1.0 - keep).t() * SHUT
    onehot = torch.eye(b, dtype=x.dtype, device=x.device).expand(x.size(0), -1, -1)
    out, _, c_last = torch.lstm(torch.cat([x, onehot], dim=2), ((h * keep)[None], c[None]),
                                [w_in, w_hh * scale, b_ih, b_hh],
                                True, 1, 0.0, True, False, False)  # biases, layers, dropout, train, bidir, batch_first
    out = out * scale  # h_t * mask
    c_last = c_last[0]
    masked_prev = out[-2] if x.size(0) > 1 else h * keep * scale  # what fed the last step
    o_last = torch.sigmoid(F.linear(x[-1], w_ih[3 * n:], b_ih[3 * n:])
                           + F.linear(masked_prev, w_hh[3 * n:], b_hh[3 * n:]))
    return out, o_last * torch.tanh(c_last), c_last
