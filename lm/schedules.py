"""Schedules for the loss's alpha and tau, and the learning-rate schedules of conf/lr_schedule.

A weight schedule maps training progress to a value. Progress is counted in ``unit``: "epoch"
(fractional: 2.5 is half-way through the third epoch) or "step" (optimizer steps).
"""

from __future__ import annotations

import functools
import math

import torch

from lm.errors import ConfigError

UNITS = ("epoch", "step")


class Schedule:
    def __init__(self, unit: str = "epoch"):
        if unit not in UNITS:
            raise ConfigError(f"schedule unit must be one of {UNITS}, got {unit!r}.")
        self.unit = unit

    def __call__(self, epoch: float, step: int) -> float:
        return self.value(epoch if self.unit == "epoch" else float(step))

    def value(self, t: float) -> float:
        raise NotImplementedError


class Constant(Schedule):
    def __init__(self, value: float, unit: str = "epoch"):
        super().__init__(unit)
        self.start = self.end = value

    def value(self, t: float) -> float:
        return self.end


class _Ramp(Schedule):
    """Goes from ``start`` to ``end`` over ``length`` units, then stays at ``end``."""

    def __init__(self, start: float, end: float, length: float, unit: str = "epoch"):
        super().__init__(unit)
        if not length > 0:
            raise ConfigError(f"schedule length must be > 0, got {length}.")
        self.start, self.end, self.length = start, end, length

    def fraction(self, t: float) -> float:
        raise NotImplementedError

    def value(self, t: float) -> float:
        return self.start + (self.end - self.start) * self.fraction(min(max(t / self.length, 0.0), 1.0))


class Linear(_Ramp):
    def fraction(self, r: float) -> float:
        return r


class Cosine(_Ramp):
    """Half a cosine: slow at both ends, fastest in the middle."""

    def fraction(self, r: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * r))


def lr_decay_factor(epoch: int, factor: float, after_epoch: int) -> float:
    """Learning-rate multiplier in (0-based) ``epoch``: 1 for the first ``after_epoch`` epochs,
    then multiplied by ``factor`` once per epoch (Zaremba et al. 2014)."""
    return factor ** max(0, epoch + 1 - after_epoch)


class DecayAfter(torch.optim.lr_scheduler.LambdaLR):
    """The learning rate times ``factor`` once per epoch after ``after_epoch`` epochs (``lr_decay_factor``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float, after_epoch: int):
        if not 0 < factor <= 1 or not isinstance(after_epoch, int) or after_epoch < 0:
            raise ConfigError(f"optim.lr_decay needs 0 < factor <= 1 and an integer after_epoch >= 0, got factor "
                              f"{factor!r}, after_epoch {after_epoch!r}.")
        super().__init__(optimizer, functools.partial(lr_decay_factor, factor=factor, after_epoch=after_epoch))


class HeldPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` that ignores the first ``hold_epochs`` validations, which also do not
    count as the best so far. While a tau or alpha schedule is still ramping, the objective itself
    moves, and a rise in val/ppl says nothing about the learning rate: counted, such rises cut the
    rate again and again while a tau ramp is still running."""

    def __init__(self, optimizer: torch.optim.Optimizer, hold_epochs: int = 0, **kwargs):
        if not isinstance(hold_epochs, int) or hold_epochs < 0:
            raise ConfigError(f"lr_schedule.hold_epochs must be an integer >= 0, got {hold_epochs!r}.")
        super().__init__(optimizer, **kwargs)
        self.hold_epochs = hold_epochs
        self.held = 0  # in state_dict(), with the rest of __dict__, so a resumed run keeps its count

    def step(self, metrics, epoch=None) -> None:
        if self.held < self.hold_epochs:
            self.held += 1
            return
        super().step(metrics)
