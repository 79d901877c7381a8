"""The projector config (checked against protobuf's own text format) and the profile's guards
on the wire; both are written end to end by tests/callbacks/test_plain_fit.py and, from a
real chief, by tests/launch/test_sinks_real_workers.py."""

import asyncio
import logging

import msgspec
import pytest

from distcb.callbacks import tensorboard_projector as projector
from distcb.callbacks.tensorboard import TensorBoard
from distcb.callbacks.tensorboard_profiling import parse_profile_batch
from distcb.coordinator.runtime import JobState, Runtime
from distcb.protocol.config import Config
from distcb.protocol.errors import ProtocolError
from distcb.protocol.messages import EpochEnd, decode_from_worker
from distcb.protocol.worker_data import EpochExtras, Profile, ProfileFile, ProfileSummary


def protobuf_text(layers, metadata) -> str:
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2

    config = projector_config_pb2.ProjectorConfig()
    for name in layers:
        entry = config.embeddings.add()
        entry.tensor_name = projector.TENSOR_NAME
        path = metadata if isinstance(metadata, str) else (metadata or {}).get(name)
        if path is not None:
            entry.metadata_path = path
    return text_format.MessageToString(config)


@pytest.mark.parametrize(
    ("layers", "metadata"),
    [
        (["tokens"], {"tokens": "words.tsv"}),
        (["a", "b"], "shared.tsv"),
        (["a", "b"], {"b": 'odd "name"\\ it\'s\ttab, é, \x01 and \x7f'}),
        (["a"], None),
        ([], None),
    ],
)
def test_config_is_protobuf_text_format(layers, metadata):
    assert projector.config_text(layers, metadata) == protobuf_text(layers, metadata)


def test_metadata_for_a_layer_that_is_not_an_embedding_is_an_error():
    with pytest.raises(ValueError, match=r"\['words'\].*Embedding layers are: \['tokens'\]"):
        projector.config_text(["tokens"], {"words": "w.tsv"})


def test_embedding_layers_of_keras_3_and_tf_keras_models():
    import keras

    class Tokens(keras.layers.Embedding):
        pass

    model = keras.Sequential(
        [keras.Input((2,)), Tokens(5, 2, name="sub"), keras.layers.Embedding(5, 2, name="plain")]
    )
    assert projector.embedding_layer_names(model) == ["sub", "plain"]
    tf_keras = pytest.importorskip("tf_keras")
    old = tf_keras.Sequential([tf_keras.layers.Embedding(5, 2, input_length=2, name="e")])
    assert projector.embedding_layer_names(old) == ["e"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, (0, 0)), (None, (0, 0)), (2, (2, 2)), ("3", (3, 3)), ("2,5", (2, 5)), ([1, 4], (1, 4))],
)
def test_profile_batch_as_keras_reads_it(value, expected):
    assert parse_profile_batch(value) == expected


@pytest.mark.parametrize("value", [-1, (3, 2), "1,x", (0, 2), 1.5, True, (1, 2, 3), ("1", "2")])
def test_bad_profile_batch_is_an_error(value):
    with pytest.raises(ValueError, match="profile_batch must be a non-negative integer"):
        parse_profile_batch(value)


def decoded_profile(raw: dict) -> Profile:
    """A profile as the coordinator decodes it from a chief's epoch end."""
    message = decode_from_worker(
        msgspec.msgpack.encode(
            {"type": "epoch_end", "rank": 0, "epoch": 0, "logs": {}, "extras": {"profile": raw}}
        )
    )
    assert isinstance(message, EpochEnd)
    assert message.extras.profile is not None
    return message.extras.profile


@pytest.mark.parametrize(
    "path",
    [
        "../escape.pb",
        "plugins/profile/../../escape.pb",
        "/etc/passwd",
        "train/x.pb",
        "plugins/profile/run/../../../x.pb",
        "plugins/profile/run\\..\\x.pb",
    ],
)
def test_profile_files_cannot_be_written_outside_the_profile_folder(path):
    raw = {"files": [{"path": path, "data": b"x"}]}
    with pytest.raises(ProtocolError, match="is not a plain path under plugins/profile/"):
        decoded_profile(raw)


def test_profile_round_trip_and_errors():
    raw = {
        "files": [{"path": "plugins/profile/run/host.xplane.pb", "data": b"trace"}],
        "summaries": [{"step": 3, "summary": b"proto"}],
    }
    profile = decoded_profile(raw)
    assert profile.files == (ProfileFile("plugins/profile/run/host.xplane.pb", b"trace"),)
    assert profile.summaries == (ProfileSummary(3, b"proto"),)
    assert decoded_profile({"error": "too big"}).error == "too big"
    with pytest.raises(ProtocolError, match=r"summaries\[0\].summary: Expected `bytes`, got `int`"):
        decoded_profile({"summaries": [{"step": 1, "summary": 3}]})


async def test_what_the_chief_could_not_send_is_reported(tmp_path, caplog):
    state = JobState(num_workers=2)
    tensorboard = TensorBoard(
        tmp_path, profile_batch=2, embeddings_freq=1, embeddings_metadata={"words": "w.tsv"}
    )
    tensorboard.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))

    def run() -> None:
        tensorboard.on_train_begin()
        state.epoch_extras = {
            0: EpochExtras(
                profile=Profile(error="the profile takes 9 bytes"), embedding_layers=("tokens",)
            ),
            1: EpochExtras(embedding_layers=("ignored: not the chief's",)),
        }
        tensorboard.on_epoch_end(0, {"loss": 1.0})
        tensorboard.on_train_end()

    with caplog.at_level(logging.WARNING, logger="distcb.callbacks.tensorboard"):
        await asyncio.to_thread(run)
        await tensorboard.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("the chief sent no profile: the profile takes 9 bytes" in m for m in messages)
    assert any("no projector config written" in m and "['words']" in m for m in messages)
    assert not (tmp_path / "projector_config.pbtxt").exists()
