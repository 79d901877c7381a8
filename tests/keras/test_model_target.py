"""The chief's saves: Keras's own formats, written through a temporary file of the same suffix
and renamed; what a killed save left behind goes at the next save."""

from __future__ import annotations

import numpy as np
import pytest

from distcb.keras.model_target import TEMP_PREFIX, KerasModelTarget


@pytest.fixture
def model():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    return model


@pytest.mark.parametrize("name", ["best.keras", "best.weights.h5"])
def test_a_save_removes_what_a_killed_save_left_and_keras_reads_the_file(model, tmp_path, name):
    keras = pytest.importorskip("keras")
    stale = tmp_path / f"{TEMP_PREFIX}k2j3h4.keras"  # a save killed between write and rename
    stale.write_bytes(b"half a file")
    other = tmp_path / "notes.txt"  # not ours: stays
    other.write_text("x")
    target = KerasModelTarget(model)
    target.save(str(tmp_path / name), weights_only=name.endswith(".weights.h5"), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "notes.txt"])
    if name.endswith(".keras"):
        loaded = keras.models.load_model(tmp_path / name)
    else:
        loaded = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        loaded.load_weights(tmp_path / name)
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_overwrite_false_keeps_an_existing_file(model, tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"the user's file")
    KerasModelTarget(model).save(str(path), weights_only=False, overwrite=False)
    assert path.read_bytes() == b"the user's file"
