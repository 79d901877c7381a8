"""`distcb.protocol.wire_bounds`: the walk counts exactly what the decoder would allocate,
so legitimate messages pass and the bounds name their Config fields."""

from __future__ import annotations

import math

import msgspec
import pytest

from distcb.protocol import wire_bounds
from distcb.protocol.config import Config
from distcb.protocol.errors import ProtocolError
from distcb.protocol.messages import (
    BatchFrame,
    EpochEnd,
    decode_from_coordinator,
    decode_from_worker,
    encode,
)
from distcb.protocol.worker_data import MAX_WEIGHTS, MAX_WORKER_REQUESTS, PNG_SIGNATURE


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


def _epoch_end(extras: dict) -> bytes:
    return msgspec.msgpack.encode(
        {"type": "epoch_end", "rank": 0, "epoch": 0, "logs": {}, "extras": extras}
    )


def _start(requests: list) -> bytes:
    return msgspec.msgpack.encode({"type": "start", "worker_requests": requests})


HISTOGRAM = {"name": "w", "min": 0.0, "max": 1.0, "num": 2, "sum": 1.0, "sum_squares": 1.0}
PNG = PNG_SIGNATURE + b"rest"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_epoch_end({"weights": {}}), r"epoch_end: field extras: Object contains unknown field"),
        (
            _epoch_end(
                {"histograms": [{**HISTOGRAM, "bucket_limits": [1.0], "bucket_counts": []}]}
            ),
            r"1 bucket_limits but 0 bucket_counts",
        ),
        (
            _epoch_end({"histograms": [{**HISTOGRAM, "min": math.nan}]}),
            r"field extras.histograms\[0\].min: Expected `float` >= ",
        ),
        (
            _epoch_end({"histograms": [{**HISTOGRAM, "bucket_limits": [1.0] * 1025}]}),
            r"extras.histograms\[0\].bucket_limits: Expected `array` of length <= 1024",
        ),
        (
            _epoch_end({"histograms": [HISTOGRAM] * (MAX_WEIGHTS + 1)}),
            rf"extras.histograms: Expected `array` of length <= {MAX_WEIGHTS}",
        ),
        (
            _epoch_end({"images": [{"name": "w", "width": 1, "height": 1, "pngs": [b"GIF89a"]}]}),
            r"every entry of pngs must be a PNG image",
        ),
        (
            # base64 text inside MessagePack, as version 2 sent it: refused, bytes expected
            _epoch_end({"images": [{"name": "w", "width": 1, "height": 1, "pngs": ["iVBO"]}]}),
            r"extras.images\[0\].pngs\[0\]: Expected `bytes`, got `str`",
        ),
        (
            _epoch_end({"images": [{"name": "w", "width": 1, "height": 1, "pngs": [PNG] * 17}]}),
            r"pngs: Expected `array` of length <= 16",
        ),
        (
            _epoch_end({"images": [{"name": "w", "width": 0, "height": 1, "pngs": [PNG]}]}),
            r"extras.images\[0\].width: Expected `int` >= 1",
        ),
        (
            _epoch_end({"profile": {"files": [{"path": "plugins/profile/../../x", "data": b""}]}}),
            r"is not a plain path under plugins/profile/",
        ),
        (
            _epoch_end({"profile": {"files": [{"path": "/etc/passwd", "data": b""}]}}),
            r"is not a plain path under plugins/profile/",
        ),
        (_epoch_end({"iterations": -1}), r"extras.iterations: Expected `int` >= 0"),
        (
            _epoch_end({"embedding_layers": [""]}),
            r"extras.embedding_layers\[0\]: Expected `str` of",
        ),
    ],
)
def test_worker_data_from_a_worker_is_bounded_and_checked(data, expected):
    with pytest.raises(ProtocolError, match=expected):
        decode_from_worker(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_start([{"kind": "gradients", "every_epochs": 1}]), r"Invalid value 'gradients'"),
        (
            _start([{"kind": "histograms", "every_epochs": 1, "bins": 30}]),
            r"field worker_requests\[0\]: Object contains unknown field `bins`",
        ),
        (
            _start([{"kind": "histograms", "every_epochs": 0}]),
            r"worker_requests\[0\].every_epochs: Expected `int` >= 1",
        ),
        (
            _start([{"kind": "profile", "first_batch": 5, "last_batch": 2}]),
            r"last_batch 2 is before first_batch 5",
        ),
        (
            _start([{"kind": "model_json"}] * (MAX_WORKER_REQUESTS + 1)),
            rf"worker_requests: Expected `array` of length <= {MAX_WORKER_REQUESTS}",
        ),
        (
            msgspec.msgpack.encode({"type": "start", "histogram_freq": 2}),
            r"unknown field `histogram_freq`",  # TensorBoard's old fields are gone
        ),
    ],
)
def test_worker_requests_from_the_coordinator_are_bounded_and_checked(data, expected):
    with pytest.raises(ProtocolError, match=expected):
        decode_from_coordinator(data)
