"""The window rule, stated once in `distcb.protocol.decisions`: the worker's `may_begin`,
the coordinator's bound on batch logs and the effect step of a batch decision agree."""

from __future__ import annotations

import msgspec
import pytest

from distcb.protocol.decisions import batch_effect_step, last_allowed_step, may_begin
from distcb.protocol.messages import Start, decode_from_coordinator, encode


@pytest.mark.parametrize("window", [1, 2, 7, 32])
@pytest.mark.parametrize("processed", [-1, 0, 5, 100])
def test_a_worker_may_begin_exactly_up_to_the_last_allowed_step(processed: int, window: int):
    last = last_allowed_step(processed, window)
    assert last == processed + window
    assert may_begin(last, processed, window)
    assert not may_begin(last + 1, processed, window)


@pytest.mark.parametrize("window", [1, 4, 32])
@pytest.mark.parametrize("processed", [-1, 0, 9])
def test_no_worker_can_have_begun_a_batch_decisions_effect_step(processed: int, window: int):
    # A decision made while processing P goes out before the progress that says P is
    # processed: a worker then knows at most P - 1 (or P itself, at best), so E = P + W + 1
    # is beyond what it may have begun.
    effect = batch_effect_step(processed, window)
    for known in (processed - 1, processed):
        assert not may_begin(effect, known, window)
    assert may_begin(effect, processed + 1, window)  # once told P + 1, it may begin E


def test_without_a_bound_every_step_may_begin():
    assert may_begin(10**9, -1, None)


def test_the_bound_keeps_its_wire_name():
    # `Start.ahead_steps` (W or max_ahead_steps) travels as "window_steps", as it always did.
    data = encode(Start(ahead_steps=8))
    assert msgspec.msgpack.decode(data)["window_steps"] == 8
    assert decode_from_coordinator(data) == Start(ahead_steps=8)
