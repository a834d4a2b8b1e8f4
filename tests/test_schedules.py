import math

import pytest
import torch

from lm.errors import ConfigError
from lm.schedules import Constant, Cosine, Linear, lr_decay_factor


def test_constant():
    s = Constant(0.3)
    assert s(0.0, 0) == s(17.5, 9999) == 0.3


def test_linear_ramp_in_epochs_then_flat():
    s = Linear(start=0.0, end=1.0, length=4)
    assert s(0.0, 123) == 0.0
    assert s(1.0, 0) == pytest.approx(0.25)
    assert s(3.0, 0) == pytest.approx(0.75)
    assert s(4.0, 0) == s(10.0, 0) == 1.0


def test_linear_ramp_in_steps_ignores_epochs():
    s = Linear(start=1.0, end=0.0, length=100, unit="step")
    assert s(50.0, 25) == pytest.approx(0.75)
    assert s(0.0, 100) == 0.0


def test_cosine_ramp():
    s = Cosine(start=0.0, end=2.0, length=10)
    assert s(0.0, 0) == 0.0
    assert s(5.0, 0) == pytest.approx(1.0)
    assert s(2.5, 0) == pytest.approx(1.0 - math.cos(math.pi / 4))
    assert s(10.0, 0) == s(50.0, 0) == 2.0


def test_bad_schedule_settings():
    with pytest.raises(ConfigError, match="unit"):
        Linear(0.0, 1.0, 5, unit="batches")
    with pytest.raises(ConfigError, match="length"):
        Cosine(0.0, 1.0, 0)


def test_lr_decay_after_epoch():
    factors = [lr_decay_factor(e, 0.5, after_epoch=4) for e in range(7)]
    assert factors == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_decay_after_is_the_papers_per_epoch_decay_and_resumes():
    from lm.schedules import DecayAfter

    def run(epochs, scheduler_state=None):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = DecayAfter(optimizer, factor=0.9, after_epoch=5)
        if scheduler_state is not None:
            optimizer.param_groups[0]["lr"] = scheduler_state["_last_lr"][0]
            scheduler.load_state_dict(scheduler_state)
        lrs = []
        for _ in range(epochs):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs, scheduler.state_dict()

    lrs, state = run(8)
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 0.9, 0.81, 0.729])  # epochs 1-5 at lr 1, then x 0.9 each
    first, state_3 = run(3)
    rest, _ = run(5, state_3)
    assert first + rest == pytest.approx(lrs)
    with pytest.raises(ConfigError, match="optim.lr_decay"):
        DecayAfter(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), factor=1.5, after_epoch=5)
