import json
import math

import pytest

from distcb.core.decisions import EffectPoint, SaveModel, SetLearningRate, StopTraining
from distcb.core.errors import ProtocolError
from distcb.core.messages import (
    PROTOCOL_VERSION,
    BatchEntry,
    BatchFrame,
    EpochEnd,
    EpochReply,
    Join,
    Progress,
    Start,
    decode,
    encode,
)


def roundtrip(message):
    return decode(json.loads(json.dumps(encode(message), allow_nan=False)))


def test_every_message_roundtrips_through_strict_json():
    messages = [
        Join(1, 2, {"epochs": 3, "directions": {"loss": "min", "accuracy": "max"}}),
        BatchFrame(0, 2, (BatchEntry(0, {"loss": 0.5}, 32.0), BatchEntry(3, {"loss": math.inf}))),
        EpochEnd(0, 1, {"loss": math.nan, "val_loss": 0.25, "hist": [1.0, 2.0]}, 30.0, 70.0),
        Progress(1, 7, (StopTraining(at=EffectPoint.batch(1, 40)),)),
        Start(
            window_steps=8,
            histogram_freq=2,
            write_images=True,
            profile_batch=(2, 4),
            embeddings_freq=1,
            embeddings_dir="/tmp/tb/train",
        ),
        EpochReply(
            4,
            (
                SetLearningRate(at=EffectPoint.epoch_begin(5), learning_rate=0.01),
                SaveModel(at=EffectPoint.epoch_end(4), filepath="/tmp/m.keras"),
            ),
        ),
    ]
    for message in messages:
        back = roundtrip(message)
        assert type(back) is type(message)
        if isinstance(message, EpochEnd):
            assert math.isnan(back.logs["loss"])
            assert back.logs["val_loss"] == 0.25
            assert back.samples == 30.0
            assert back.val_samples == 70.0
        elif isinstance(message, BatchFrame):
            assert back.entries[1].logs["loss"] == math.inf
        else:
            assert back == message


def test_numpy_scalars_are_unwrapped():
    np = pytest.importorskip("numpy")
    data = encode(EpochEnd(0, 0, {"loss": np.float32(0.5), "acc": np.float64(1.0)}))
    assert data["logs"] == {"loss": 0.5, "acc": 1.0}
    assert isinstance(data["logs"]["loss"], float)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], "must be a JSON object"),
        ({"type": "nope"}, "unknown message type 'nope'"),
        ({"type": "join", "protocol": 99, "rank": 0, "world_size": 1, "params": {}}, "version 99"),
        (
            {
                "type": "join",
                "protocol": PROTOCOL_VERSION,
                "rank": 2,
                "world_size": 2,
                "params": {},
            },
            "rank 2 is outside world_size 2",
        ),
        (
            {
                "type": "join",
                "protocol": PROTOCOL_VERSION,
                "rank": 0,
                "world_size": 1,
                "params": {"directions": {"loss": "down"}},
            },
            "'min' or 'max'",
        ),
        (
            {"type": "batches", "rank": 0, "epoch": 0, "entries": [[1, None, {}], [1, None, {}]]},
            "step must be an int above 1",
        ),
        ({"type": "batches", "rank": 0, "epoch": 0, "entries": [[0, -3, {}]]}, "count >= 0"),
        ({"type": "epoch_end", "rank": -1, "epoch": 0, "logs": {}}, "'rank' must be >= 0"),
        ({"type": "epoch_end", "rank": 0, "epoch": 0, "logs": {"loss": {"x": 1}}}, "unsupported"),
        (
            {"type": "epoch_reply", "epoch": 0, "decisions": [{"kind": "explode"}]},
            "unknown decision",
        ),
        (
            {
                "type": "epoch_reply",
                "epoch": 0,
                "decisions": [
                    {
                        "kind": "set_lr",
                        "at": {"phase": "epoch_begin", "epoch": 1},
                        "learning_rate": "fast",
                    }
                ],
            },
            "must be float",
        ),
        ({"type": "progress", "epoch": 0, "processed_step": True}, "must not be a boolean"),
        ({"type": "start", "profile_batch": [1]}, "profile_batch must be [start, stop]"),
        ({"type": "start", "embeddings_freq": -1}, "embeddings_freq must be an int >= 0"),
        ({"type": "start", "embeddings_dir": 3}, "embeddings_dir must be a string"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(data, expected):
    with pytest.raises(ProtocolError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        decode(data)


def test_framework_tensors_and_odd_numbers_are_unwrapped():
    class FakeTensor:  # what tf_keras hands a callback: has .numpy()
        def __init__(self, value):
            self.value = value

        def numpy(self):
            return self.value

    np = pytest.importorskip("numpy")
    tensors = {"t": FakeTensor(np.float32(0.25)), "v": FakeTensor(np.array([1.0, math.inf]))}
    logs = encode(EpochEnd(0, 0, tensors))
    assert logs["logs"] == {"t": 0.25, "v": [1.0, "Infinity"]}
    with pytest.raises(ProtocolError, match="received object"):
        encode(EpochEnd(0, 0, {"bad": object()}))
