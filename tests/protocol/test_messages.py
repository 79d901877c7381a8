"""Wire messages: every declared type roundtrips, bad input is named precisely, fuzzing."""

import base64
import contextlib
import math

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcb.protocol.decisions import (
    DECISION_TYPES,
    BackupModel,
    EffectPoint,
    ReleaseWeights,
    RestoreWeights,
    SaveModel,
    SetLearningRate,
    SnapshotWeights,
    StopTraining,
)
from distcb.protocol.errors import ProtocolError
from distcb.protocol.logs import clean_logs, from_json_value, to_json_value
from distcb.protocol.messages import (
    COORDINATOR_MESSAGES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    WORKER_MESSAGES,
    Abort,
    BackedUp,
    BatchFrame,
    Done,
    EpochEnd,
    EpochReply,
    Heartbeat,
    Join,
    JoinParams,
    Preempted,
    Progress,
    Resume,
    Saved,
    Start,
    TrainEnd,
    TrainEndReply,
    WorkerFailed,
    decode_from_coordinator,
    decode_from_worker,
    encode,
)
from distcb.protocol.worker_data import (
    PNG_SIGNATURE,
    EmbeddingsRequest,
    EpochExtras,
    HistogramRequest,
    ModelJsonRequest,
    Profile,
    ProfileFile,
    ProfileRequest,
    ProfileSummary,
    WeightHistogram,
    WeightImage,
)

DECISIONS = {
    StopTraining: StopTraining(at=EffectPoint.batch(1, 40)),
    SetLearningRate: SetLearningRate(at=EffectPoint.epoch_begin(5), learning_rate=0.01),
    SnapshotWeights: SnapshotWeights(at=EffectPoint.epoch_end(3), snapshot_id=7),
    RestoreWeights: RestoreWeights(at=EffectPoint.train_end(), snapshot_id=7),
    ReleaseWeights: ReleaseWeights(at=EffectPoint.epoch_end(4), snapshot_id=2),
    SaveModel: SaveModel(at=EffectPoint.epoch_end(4), filepath="/tmp/m.keras", overwrite=False),
    BackupModel: BackupModel(at=EffectPoint.epoch_end(4), epoch=4, keep_snapshots=(2, 7)),
}

REQUESTS = (
    HistogramRequest(every_epochs=2, images=True),
    ModelJsonRequest(),
    ProfileRequest(first_batch=3, last_batch=5),
    EmbeddingsRequest(every_epochs=1, directory="/tmp/logs/train"),
)
PNG = PNG_SIGNATURE + b"\x00\xff rest of the image"
EXTRAS = EpochExtras(
    iterations=40,
    histograms=(
        WeightHistogram(
            name="dense/kernel",
            min=-1.0,
            max=2.0,
            num=3,
            sum=1.5,
            sum_squares=5.25,
            bucket_limits=(0.0, 2.0),
            bucket_counts=(1, 2),
        ),
        WeightHistogram(name="dense/bias", min=0, max=0, num=0, sum=0, sum_squares=0, nonfinite=4),
    ),
    images=(WeightImage(name="dense/kernel", width=3, height=1, pngs=(PNG, PNG)),),
    model_json='{"class_name": "Sequential"}',
    embedding_layers=("tokens",),
    profile=Profile(
        files=(ProfileFile(path="plugins/profile/run/host.xplane.pb", data=bytes(range(256))),),
        summaries=(ProfileSummary(step=5, summary=b"\x0a\x00"),),
    ),
)

SAMPLES = {
    Join: Join(
        rank=1,
        world_size=2,
        params=JoinParams(epochs=3, metrics=["loss", "accuracy"], directions={"accuracy": "max"}),
    ),
    BatchFrame: BatchFrame(
        rank=0,
        epoch=2,
        steps=[0, 3],
        logs={"loss": [0.5, math.inf], "per_class": [[1.0, 2.0], [3.0, 4.0]]},
        samples=[32.0, None],
    ),
    EpochEnd: EpochEnd(
        rank=0,
        epoch=1,
        logs={"loss": math.nan, "val_loss": 0.25, "hist": [1.0, 2.0], "tag": "x"},
        samples=30.0,
        val_samples=70.0,
        extras=EXTRAS,
    ),
    TrainEnd: TrainEnd(rank=1),
    Done: Done(rank=1, report={"learning_rate": 0.01, "applied": [[0, -1, {"kind": "stop"}]]}),
    Saved: Saved(rank=0, filepath="/tmp/m.keras", error=None),
    WorkerFailed: WorkerFailed(rank=1, error="ValueError: boom", traceback="Traceback ..."),
    BackedUp: BackedUp(rank=1, epoch=4, error="OSError: disk full"),
    Preempted: Preempted(rank=1),
    Heartbeat: Heartbeat(),
    Start: Start(
        decisions=tuple(DECISIONS.values()),
        ahead_steps=8,
        worker_requests=REQUESTS,
        persist_snapshots=True,
        resume=Resume(epoch=4, snapshots=(2, 7), stopping=False),
    ),
    Progress: Progress(epoch=1, processed_step=7, decisions=(DECISIONS[StopTraining],)),
    EpochReply: EpochReply(epoch=4, decisions=(DECISIONS[SaveModel], DECISIONS[SetLearningRate])),
    TrainEndReply: TrainEndReply(decisions=(DECISIONS[RestoreWeights],), error="rank 1 died"),
    Abort: Abort(reason="rank 1 died", decisions=(DECISIONS[StopTraining],)),
}


def same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    return to_json_value(msgspec.to_builtins(a)) == to_json_value(msgspec.to_builtins(b))


def test_every_registered_message_type_has_a_sample():
    assert set(SAMPLES) == set(MESSAGE_TYPES.values())
    assert set(DECISIONS) == set(DECISION_TYPES)


@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES))
def test_every_message_type_roundtrips(kind):
    message = SAMPLES[MESSAGE_TYPES[kind]]
    data = encode(message)
    decoders = []
    if type(message) in WORKER_MESSAGES:
        decoders.append(decode_from_worker)
    if type(message) in COORDINATOR_MESSAGES:
        decoders.append(decode_from_coordinator)
    assert decoders
    for decode in decoders:
        back = decode(data)
        assert type(back) is type(message)
        assert same(back, message)


def test_each_side_refuses_the_other_sides_messages():
    with pytest.raises(ProtocolError, match=r"a worker sent a message of type 'start'"):
        decode_from_worker(encode(SAMPLES[Start]))
    with pytest.raises(ProtocolError, match=r"a coordinator sent a message of type 'join'"):
        decode_from_coordinator(encode(SAMPLES[Join]))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"type": "join", "rank": "x", "world_size": 2}, r"join: field rank: Expected `int`.*'x'"),
        ({"type": "join", "rank": 3, "world_size": 2}, r"rank 3 is outside world_size 2"),
        (
            {"type": "join", "rank": 0, "world_size": 2, "params": {"learning_rate": "abc"}},
            r"join: field params.learning_rate: Expected `float \| null`.*received 'abc'",
        ),
        (
            {"type": "join", "rank": 0, "world_size": 2, "params": {"initial_epoch": "x"}},
            r"field params.initial_epoch: Expected `int`.*received 'x'",
        ),
        (
            {"type": "join", "rank": 0, "world_size": 2, "params": {"metrics": 5}},
            r"field params.metrics: Expected `array`.*received 5",
        ),
        (
            {"type": "join", "rank": 0, "world_size": 2, "protocol": 1},
            rf"protocol version 1 is not supported.*speaks version {PROTOCOL_VERSION}",
        ),
        (
            {"type": "batches", "rank": 0, "epoch": 0, "steps": [1, 0], "logs": {}},
            r"batches: steps must be strictly increasing",
        ),
        (
            {"type": "batches", "rank": 0, "epoch": 0, "steps": [0], "logs": {"loss": []}},
            r"logs\['loss'\] has 0 values for 1 steps",
        ),
        (
            {"type": "saved", "rank": 0, "filepath": "x" * 5000},
            r"saved: field filepath: Expected `str` of length <= 4096",
        ),
        ({"type": "wobble"}, r"unknown message type 'wobble'"),
        ([1, 2], r"must be a map with a 'type', received \[1, 2\]"),
        ({"type": "heartbeat", "extra": 1}, r"unknown field `extra`"),
    ],
)
def test_bad_messages_name_the_message_the_field_and_the_value(raw, expected):
    with pytest.raises(ProtocolError, match=expected):
        decode_from_worker(msgspec.msgpack.encode(raw))


def test_bad_decisions_are_refused():
    bad_lr = {"kind": "set_lr", "at": [1, 0, -1], "learning_rate": math.inf}
    with pytest.raises(ProtocolError, match="learning_rate must be finite"):
        decode_from_coordinator(
            msgspec.msgpack.encode({"type": "abort", "reason": "x", "decisions": [bad_lr]})
        )
    bad_point = {"kind": "stop", "at": [1, 1, -1]}  # a batch point without a step
    with pytest.raises(ProtocolError, match="has a step if and only if it is a batch point"):
        decode_from_coordinator(
            msgspec.msgpack.encode(
                {"type": "progress", "epoch": 1, "processed_step": 0, "decisions": [bad_point]}
            )
        )


def test_effect_points_order_by_training_time():
    points = [
        EffectPoint.train_end(),
        EffectPoint.epoch_end(1),
        EffectPoint.batch(1, 5),
        EffectPoint.epoch_begin(2),
        EffectPoint.epoch_begin(1),
        EffectPoint.batch(1, 0),
    ]
    assert sorted(points) == [
        EffectPoint.epoch_begin(1),
        EffectPoint.batch(1, 0),
        EffectPoint.batch(1, 5),
        EffectPoint.epoch_end(1),
        EffectPoint.epoch_begin(2),
        EffectPoint.train_end(),
    ]


def test_numpy_scalars_and_arrays_are_unwrapped_for_the_wire():
    logs = clean_logs({"loss": np.float32(0.5), "acc": np.float64(1.0), "per": np.arange(2.0)})
    assert logs == {"loss": 0.5, "acc": 1.0, "per": [0.0, 1.0]}
    assert all(type(v) in (float, list) for v in logs.values())
    back = decode_from_worker(encode(EpochEnd(rank=0, epoch=0, logs=logs)))
    assert back.logs == logs


def test_json_view_keeps_non_finite_values():
    value = {"a": [math.nan, math.inf, -math.inf, 1.5], "b": "text"}
    text = to_json_value(value)
    assert text == {"a": ["NaN", "Infinity", "-Infinity", 1.5], "b": "text"}
    back = from_json_value(text)
    assert math.isnan(back["a"][0])
    assert back["a"][1:] == [math.inf, -math.inf, 1.5]


# ----------------------------------------------------------------------------- fuzzing

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_messages = st.fixed_dictionaries(
    {"type": st.sampled_from([*sorted(MESSAGE_TYPES), "nope"])},
    optional={
        "rank": _values,
        "world_size": _values,
        "epoch": _values,
        "steps": _values,
        "logs": _values,
        "params": _values,
        "decisions": _values,
        "protocol": _values,
        "filepath": _values,
        "report": _values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_messages.map(msgspec.msgpack.encode), st.binary(max_size=200)))
def test_fuzzed_frames_raise_protocol_errors_only(frame):
    for decode in (decode_from_worker, decode_from_coordinator):
        with contextlib.suppress(ProtocolError):  # anything else fails the test
            decode(frame)


@pytest.mark.parametrize(
    ("resume", "epochs", "first"),
    [
        (Resume(epoch=4), 10, 5),  # after the barrier of epoch 4
        (Resume(epoch=4, stopping=True), 10, 10),  # it had decided to stop: none is left
        (Resume(epoch=9), 10, 10),  # the last barrier: only the train end is left
    ],
)
def test_a_resumed_job_trains_from_the_epoch_after_its_barrier(resume, epochs, first):
    assert resume.first_epoch(epochs) == first


@pytest.mark.parametrize("value", [EXTRAS, SAMPLES[Start]], ids=["extras", "start"])
def test_worker_data_roundtrips_in_json_too(value):
    """Binary data is MessagePack bin on the wire, base64 in JSON: both decode to the same."""
    kind = type(value)
    assert msgspec.json.decode(msgspec.json.encode(value), type=kind) == value
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=kind) == value


def test_binary_extras_travel_as_bytes_not_base64_text():
    raw = msgspec.msgpack.decode(encode(SAMPLES[EpochEnd]))
    profile_file = raw["extras"]["profile"]["files"][0]
    assert profile_file["data"] == bytes(range(256))  # bin: no base64 inside MessagePack
    assert raw["extras"]["images"][0]["pngs"][0] == PNG
    as_json = msgspec.json.decode(msgspec.json.encode(SAMPLES[EpochEnd]))
    assert as_json["extras"]["images"][0]["pngs"][0] == base64.b64encode(PNG).decode()


def test_an_epoch_end_without_extras_sends_an_empty_map():
    raw = msgspec.msgpack.decode(encode(EpochEnd(rank=1, epoch=0, logs={})))
    assert raw["extras"] == {}
