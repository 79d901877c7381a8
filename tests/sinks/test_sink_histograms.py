"""The weight-histogram payload the chief sends and the TensorBoard sink decodes."""

import json
import math

import numpy as np
import pytest

from distcb.protocol.histograms import WeightHistogram, decode_weight_histograms, weight_histograms


def test_payload_is_strict_json_and_round_trips():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    payload = weight_histograms({"dense/kernel": kernel, "dense/bias": np.zeros(3)}, bins=5)
    wire = json.loads(json.dumps(payload, allow_nan=False))
    decoded = {h.name: h for h in decode_weight_histograms(wire)}

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
    json.dumps(payload, allow_nan=False)
    (h,) = decode_weight_histograms(payload)
    assert (h.num, h.nonfinite, h.min, h.max, h.bucket_counts) == (2, 2, 1.0, 2.0, (1, 1))
    assert h.tag == "w_0/histogram"  # ':' replaced as Keras does

    (empty,) = decode_weight_histograms(weight_histograms({"w": np.array([math.nan])}))
    assert empty == WeightHistogram("w", 0.0, 0.0, 0, 0.0, 0.0, (), (), nonfinite=1)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "must be an object"),
        ({"version": 2, "weights": {}}, "version 2 is not supported"),
        ({"version": 1}, "lacks the object 'weights'"),
        ({"version": 1, "weights": {"w": 3}}, r"histograms\['w'\] must be an object"),
        (
            {"version": 1, "weights": {"w": {"bucket_limits": [1.0], "bucket_counts": []}}},
            "1 bucket_limits but 0 bucket_counts",
        ),
        (
            {
                "version": 1,
                "weights": {
                    "w": {
                        "min": "low",
                        "max": 1,
                        "num": 1,
                        "sum": 1,
                        "sum_squares": 1,
                        "bucket_limits": [1.0],
                        "bucket_counts": [1],
                    }
                },
            },
            "'min' must be a finite number",
        ),
    ],
)
def test_malformed_payloads_are_rejected(payload, message):
    with pytest.raises(ValueError, match=message):
        decode_weight_histograms(payload)


def test_bins_must_be_positive():
    with pytest.raises(ValueError, match="bins must be a positive integer, received 0"):
        weight_histograms({"w": np.ones(2)}, bins=0)
