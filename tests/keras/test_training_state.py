"""A Keras 3 model's training state captured at a barrier and written off the training thread
(issue 24): the capture keeps the barrier's values while training goes on, and a model
loaded from what was written trains on exactly as the uninterrupted one."""

from __future__ import annotations

import os

import numpy as np
import pytest

from distcb.keras import training_state
from distcb.keras.model_target import KerasModelTarget

keras = pytest.importorskip("keras")


def build(jit_compile: bool = False, *, width: int = 16) -> object:
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dropout(0.3),  # a seed generator: its state is training state too
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) > 0).astype("float32")


def values(model: object) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in training_state.state_variables(model)]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
def test_a_capture_keeps_the_barriers_values_while_training_goes_on(jit_compile):
    x, y = data()
    model = build(jit_compile)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    at_barrier = values(model)
    captured = KerasModelTarget(model).capture_state()
    assert captured.detached
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)  # updates every variable in place
    assert any(not np.array_equal(a, b) for a, b in zip(at_barrier, values(model), strict=True))
    assert [name for name, _ in captured.arrays] == [
        v.path for v in training_state.state_variables(model)
    ]
    for (name, got), want in zip(captured.arrays, at_barrier, strict=True):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_a_model_loaded_from_the_written_state_trains_on_as_the_uninterrupted_one(tmp_path):
    x, y = data()
    uninterrupted = build()
    uninterrupted.fit(x, y, epochs=1, batch_size=16, verbose=0)
    captured = KerasModelTarget(uninterrupted).capture_state()
    uninterrupted.fit(x, y, epochs=2, batch_size=16, verbose=0)  # while the writer writes
    digests = captured.write(str(tmp_path))
    path = tmp_path / training_state.STATE_FILE
    assert digests[training_state.STATE_FILE]["bytes"] == os.path.getsize(path)

    resumed = build()  # a fresh process's model: other initial weights would not matter
    KerasModelTarget(resumed).load_state(str(tmp_path))
    resumed.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for got, want, variable in zip(
        values(resumed),
        values(uninterrupted),
        training_state.state_variables(uninterrupted),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want, err_msg=variable.path)


def test_the_digest_is_the_files(tmp_path):
    import hashlib

    model = build()
    digests = training_state.capture(model).write(str(tmp_path))
    data_bytes = (tmp_path / training_state.STATE_FILE).read_bytes()
    assert digests[training_state.STATE_FILE]["sha256"] == hashlib.sha256(data_bytes).hexdigest()


def test_a_backup_of_another_model_is_refused_naming_the_variable(tmp_path):
    training_state.capture(build(width=16)).write(str(tmp_path))
    with pytest.raises(
        ValueError, match=r"'sequential(_\d+)?/dense(_\d+)?/kernel' as float32\[4, 16\]"
    ):
        training_state.load(build(width=8), str(tmp_path))


def test_a_cut_file_is_refused(tmp_path):
    training_state.capture(build()).write(str(tmp_path))
    path = tmp_path / training_state.STATE_FILE
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="is cut short"):
        training_state.load(build(), str(tmp_path))
