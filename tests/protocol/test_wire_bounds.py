"""`distcb.protocol.wire_bounds`: the walk counts exactly what the decoder would allocate,
so legitimate messages pass and the bounds name their Config fields."""

from __future__ import annotations

import msgspec
import pytest

from distcb.protocol import wire_bounds
from distcb.protocol.config import Config
from distcb.protocol.errors import ProtocolError
from distcb.protocol.messages import BatchFrame, EpochEnd, decode_from_worker, encode


def values(obj: object) -> int:
    """Every value of a decoded MessagePack document: containers, keys, items, scalars."""
    if isinstance(obj, dict):
        return 1 + sum(1 + values(v) for v in obj.values())
    if isinstance(obj, list):
        return 1 + sum(values(v) for v in obj)
    return 1


DOCUMENTS = [
    {"a": [1, 2.5, -3, None, True, "x" * 300, b"\x00" * 70000, [[], {}], 2**40, -(2**40)]},
    [float(i) / 7 for i in range(5000)] + list(range(300)) + [{"k": [i]} for i in range(40)],
    {"s" * 10: {"t": {"u": [1.5] * 17}}, "big": list(range(70000))},
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_walk_counts_every_value_exactly(document):
    data = msgspec.msgpack.encode(document)
    exact = values(msgspec.msgpack.decode(data))
    wire_bounds._walk(data, exact, 32, "doc")  # exactly at the bound: accepted
    with pytest.raises(ProtocolError, match="Config.max_decoded_elements"):
        wire_bounds._walk(data, exact - 1, 32, "doc")


def test_depth_is_counted_in_containers():
    data = msgspec.msgpack.encode([[[[1.0]]]])
    wire_bounds._walk(data, 100, 4, "doc")
    with pytest.raises(ProtocolError, match="Config.max_decoded_depth=3 deep"):
        wire_bounds._walk(data, 100, 3, "doc")


def test_a_large_legitimate_frame_is_walked_and_decoded():
    frame = BatchFrame(
        rank=0,
        epoch=0,
        steps=list(range(4096)),
        logs={f"m{i}": [[0.5 * j, j] for j in range(4096)] for i in range(20)},
    )
    data = encode(frame)
    config = Config(max_decoded_elements=300_000)
    assert wire_bounds.needs_walk(data, config.max_decoded_elements)
    assert decode_from_worker(data, config) == frame
    with pytest.raises(ProtocolError, match="max_decoded_elements=100000"):
        decode_from_worker(data, Config(max_decoded_elements=100_000))


def test_log_values_nest_at_most_three_lists_and_hold_no_maps():
    ok = EpochEnd(rank=0, epoch=0, logs={"per_class": [1.0, [2.0, [3.0, 4]]]})
    assert decode_from_worker(encode(ok)) == ok
    for value in ([[[[1.0]]]], [{"a": 1.0}]):
        raw = {"type": "epoch_end", "rank": 0, "epoch": 0, "logs": {"x": value}}
        with pytest.raises(ProtocolError, match="field logs"):
            decode_from_worker(msgspec.msgpack.encode(raw))
