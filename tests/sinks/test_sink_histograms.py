"""The weight histograms the chief sends and the TensorBoard sink writes (malformed ones are
refused by the decoder: tests/protocol/test_wire_bounds.py)."""

import math

import msgspec
import numpy as np
import pytest

from distcb.protocol.histograms import WeightHistogram, weight_histograms
from distcb.protocol.messages import EpochEnd, decode_from_worker, encode
from distcb.protocol.worker_data import EpochExtras


def over_the_wire(histograms: tuple[WeightHistogram, ...]) -> tuple[WeightHistogram, ...]:
    """Through both encodings, as a chief's epoch end (MessagePack) and as JSON."""
    message = EpochEnd(rank=0, epoch=0, logs={}, extras=EpochExtras(histograms=histograms))
    back = decode_from_worker(encode(message))
    assert isinstance(back, EpochEnd)
    as_json = msgspec.json.decode(msgspec.json.encode(histograms), type=tuple[WeightHistogram, ...])
    assert as_json == back.extras.histograms
    return back.extras.histograms


def test_histograms_round_trip():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    payload = weight_histograms({"dense/kernel": kernel, "dense/bias": np.zeros(3)}, bins=5)
    decoded = {h.name: h for h in over_the_wire(payload)}

    k = decoded["dense/kernel"]
    assert k.num == sum(k.bucket_counts) == 12
    assert len(k.bucket_limits) == 5
    assert k.min == pytest.approx(float(kernel.min()))
    assert k.max == pytest.approx(float(kernel.max()))
    assert k.bucket_limits[-1] == pytest.approx(k.max)
    assert k.sum_squares == pytest.approx(float(np.sum(kernel.astype(np.float64) ** 2)))
    assert k.tag == "dense/kernel/histogram"
    assert decoded["dense/bias"].bucket_counts[2] == 3  # a constant lands in the middle bucket


def test_non_finite_values_are_counted_not_binned():
    payload = weight_histograms({"w:0": np.array([1.0, math.nan, math.inf, 2.0])}, bins=2)
    (h,) = over_the_wire(payload)
    assert (h.num, h.nonfinite, h.min, h.max, h.bucket_counts) == (2, 2, 1.0, 2.0, (1, 1))
    assert h.tag == "w_0/histogram"  # ':' replaced as Keras does

    (empty,) = over_the_wire(weight_histograms({"w": np.array([math.nan])}))
    assert empty == WeightHistogram("w", 0.0, 0.0, 0, 0.0, 0.0, (), (), nonfinite=1)


def test_bins_must_be_positive():
    with pytest.raises(ValueError, match="bins must be a positive integer, received 0"):
        weight_histograms({"w": np.ones(2)}, bins=0)
