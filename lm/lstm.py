"""The LSTM layer of the paper's dropout: h_t times one mask per sequence, where it feeds the next step
and where it leaves the layer (lm/model.py, ``dropout_state``).

nn.LSTM cannot mask its own recurrent state, so this layer runs its own loop over time, with its backward
written out: every product that does not feed the recurrence (activation derivatives, the mask, the weight
gradients) is one operation over all steps, which leaves eight small operations per step in each
direction where autograd through the loop records about twenty-five. Gate order and parameters are nn.LSTM's.
"""

from __future__ import annotations

import torch


def masked_lstm(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, mask: torch.Tensor, w_ih: torch.Tensor,
                w_hh: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (T, B, d); h, c (B, H) carried in unmasked; mask (B, H); w_ih (4H, d), w_hh (4H, H), bias (4H,)
    (nn.LSTM's b_ih + b_hh). Returns the masked outputs (T, B, H) and the unmasked final (h, c), which the
    next window masks with its own draw. With a mask of ones it is nn.LSTM."""
    return _MaskedLSTM.apply(x, h, c, mask, w_ih, w_hh, bias)


class _MaskedLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, c, mask, w_ih, w_hh, bias):
        steps, batch, n = x.size(0), x.size(1), h.size(1)
        # gates[t] ends as step t's activated (i, f, g, o), kept for backward.
        gates = torch.addmm(bias, x.reshape(-1, x.size(2)), w_ih.t()).view(steps, batch, 4 * n)
        w_hh_t = w_hh.t()
        cells = x.new_empty(steps + 1, batch, n)  # c_{t-1} for t = 0 .. T; c_T last
        cells[0] = c
        tanh_cells = x.new_empty(steps, batch, n)  # tanh(c_t)
        out = x.new_empty(steps + 1, batch, n)  # out[0] = h_{-1} * mask, out[t + 1] = h_t * mask
        torch.mul(h, mask, out=out[0])
        for t in range(steps):
            g = gates[t].addmm_(out[t], w_hh_t)
            g[:, :2 * n].sigmoid_()
            g[:, 2 * n:3 * n].tanh_()
            g[:, 3 * n:].sigmoid_()
            i, f, cand, o = g.chunk(4, dim=1)
            torch.addcmul(f * cells[t], i, cand, out=cells[t + 1])
            torch.tanh(cells[t + 1], out=tanh_cells[t])
            torch.mul(o * mask, tanh_cells[t], out=out[t + 1])
        ctx.save_for_backward(x, mask, w_ih, w_hh, gates, cells, tanh_cells, out)
        h_last = gates[-1, :, 3 * n:] * tanh_cells[-1]
        return out[1:], h_last, cells[-1].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        x, mask, w_ih, w_hh, gates, cells, tanh_cells, out = ctx.saved_tensors
        steps, n = x.size(0), mask.size(1)
        o = gates[..., 3 * n:]
        # The gradient reaching h_t is mask * dh_t for every t (h_t is read only as h_t * mask), except for the
        # final h's own gradient; so the loop carries dh_t unmasked and the mask goes into what multiplies it.
        deriv = gates * (1 - gates)  # sigmoid' for i, f, o ...
        cand = gates[..., 2 * n:3 * n]
        torch.addcmul(torch.ones_like(cand), cand, cand, value=-1, out=deriv[..., 2 * n:3 * n])  # ... tanh' for g
        dc_dh = o * (1 - tanh_cells * tanh_cells)  # dc_t / dh_t
        dc_dh_masked = dc_dh * mask
        tanh_masked = tanh_cells * mask
        grad_gates = torch.empty_like(gates)  # (T, B, 4H): before the activations
        dc = torch.zeros_like(mask) if grad_c is None else grad_c.clone()  # dJ/dc_t from later steps
        dh = grad_out[-1].clone()
        if grad_h is not None:  # the unmasked final h: its own terms at the last step
            dc.addcmul_(grad_h, dc_dh[-1])
        for t in range(steps - 1, -1, -1):
            i, f, cand_t, _ = gates[t].chunk(4, dim=1)
            di, df, dg, do = grad_gates[t].chunk(4, dim=1)
            torch.mul(dh, tanh_masked[t], out=do)
            dc.addcmul_(dh, dc_dh_masked[t])
            torch.mul(dc, cand_t, out=di)
            torch.mul(dc, cells[t], out=df)
            torch.mul(dc, i, out=dg)
            dc.mul_(f)  # dJ/dc_{t-1}
            if t == steps - 1 and grad_h is not None:
                do.addcmul_(grad_h, tanh_cells[-1])
            grad_gates[t].mul_(deriv[t])
            dh = torch.mm(grad_gates[t], w_hh) if t == 0 else torch.addmm(grad_out[t - 1], grad_gates[t], w_hh)
        flat = grad_gates.view(-1, 4 * n)
        grad_x = torch.mm(flat, w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        grad_w_ih = torch.mm(flat.t(), x.reshape(-1, x.size(2)))
        grad_w_hh = torch.mm(flat.t(), out[:-1].reshape(-1, n))
        return grad_x, dh.mul_(mask), dc, None, grad_w_ih, grad_w_hh, flat.sum(0)
