"""The benchmark's clock: variants take turns step by step, one at a time, and errors surface."""

import importlib.util
import sys
import threading
import time

import pytest

from helpers import REPO
from lm.allocator import keep_freed_memory


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_take_turns_one_step_at_a_time_and_every_step_is_timed():
    turns = _benchmark_module().Turns(warmup=1)
    running, order, lock = [], [], threading.Lock()

    def variant(name, seconds):
        def body(tick):
            for _ in range(4):
                with lock:
                    running.append(name)
                    assert len(running) == 1, running  # nobody else runs meanwhile
                order.append(name)
                time.sleep(seconds)
                with lock:
                    running.remove(name)
                tick()
        return body

    times = turns.run({"a": variant("a", 0.01), "b": variant("b", 0.03), "c": variant("c", 0.0)}, steps=4)
    assert order[:3] == ["a", "b", "c"] and order[3:6] == ["b", "c", "a"]  # rotating order
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}  # warm-up step dropped
    assert min(times["a"]) >= 0.01 and min(times["b"]) >= 0.03  # the sleep is inside the timed step


def test_an_error_in_one_variant_is_raised_in_the_main_thread():
    turns = _benchmark_module().Turns(warmup=0)

    def fine(tick):
        for _ in range(3):
            tick()

    def broken(tick):
        tick()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        turns.run({"fine": fine, "broken": broken}, steps=3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_thresholds_are_accepted_by_glibc():
    assert keep_freed_memory() is True
