"""ModelCheckpoint: which files get saved, against Keras 3 (and tf_keras for `period`)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from distcb.callbacks import ModelCheckpoint
from distcb.coordinator.model_proxy import DecisionRecorder, ModelProxy
from distcb.protocol.decisions import SaveModel
from distcb.testing import simulate
from tests.helpers.keras_run import losses, run_distcb


def recording(model: Any) -> list[str]:
    """Make `model.save`/`save_weights` record their paths instead of writing."""
    saved: list[str] = []

    def save(filepath: str, overwrite: bool = True, **kwargs: Any) -> None:
        saved.append(os.path.abspath(filepath))

    model.save = save
    model.save_weights = save
    return saved


def saves(result: Any) -> list[str]:
    return [d.filepath for d in result.decisions if isinstance(d, SaveModel)]


VALUES = [1.0, 0.9, 0.95, 0.8]
CASES: dict[str, tuple[dict[str, Any], str, list[dict[str, Any]]]] = {
    "every_epoch": ({}, "m-{epoch:02d}.keras", losses(VALUES)),
    "h5_suffix": ({}, "m-{epoch}.h5", losses(VALUES)),
    "metrics_in_name": ({}, "m-{epoch:02d}-{val_loss:.2f}.keras", losses(VALUES)),
    "best_only": ({"save_best_only": True}, "best-{epoch}.keras", losses(VALUES)),
    "best_only_threshold": (
        {"save_best_only": True, "initial_value_threshold": 0.92},
        "best-{epoch}.keras",
        losses(VALUES),
    ),
    "best_only_max": (
        {"save_best_only": True, "mode": "max", "monitor": "val_accuracy"},
        "acc-{epoch}.keras",
        losses([0.5, 0.7, 0.6, 0.9], "val_accuracy"),
    ),
    "best_only_missing_monitor_saves": (
        {"save_best_only": True, "monitor": "val_loss"},
        "m-{epoch}.keras",
        [{"loss": 1.0}] * 3,
    ),
    "weights_only": ({"save_weights_only": True}, "w-{epoch}.weights.h5", losses(VALUES)),
    "nested_dirs": ({}, "a/b/m-{epoch}.keras", losses(VALUES[:2])),
}


@pytest.mark.filterwarnings("ignore:Can save best model only:UserWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_keras(
    case: str, keras: Any, keras_model: Any, run_keras: Any, tmp_path: Any
) -> None:
    kwargs, name, logs = CASES[case]
    model = keras_model()
    keras_saved = recording(model)
    keras_dir, our_dir = tmp_path / "keras", tmp_path / "ours"
    run_keras([keras.callbacks.ModelCheckpoint(str(keras_dir / name), **kwargs)], logs, model=model)
    ours = ModelCheckpoint(str(our_dir / name), **kwargs)
    result = run_distcb([ours], logs)
    expected = [p.replace(str(keras_dir), str(our_dir)) for p in keras_saved]
    assert saves(result) == expected
    assert result.workers[0].saves == [d for d in result.decisions if isinstance(d, SaveModel)]
    assert all(d.weights_only == ours.save_weights_only for d in result.workers[0].saves)
    assert all(d.at.phase == "epoch_end" for d in result.workers[0].saves)
    assert all(os.path.isdir(os.path.dirname(p)) for p in expected)  # made by the coordinator


def test_batch_frequency_parity_with_keras(
    keras: Any, keras_model: Any, run_keras: Any, tmp_path: Any
) -> None:
    logs = losses([1.0, 0.9])
    batch_logs = [[{"loss": 1.0}, {"loss": 0.9}, {"loss": 0.8}]] * 2
    model = keras_model()
    keras_saved = recording(model)
    name = str(tmp_path / "b-{epoch}-{batch}.keras")
    run_keras([keras.callbacks.ModelCheckpoint(name, save_freq=2)], logs, batch_logs, model=model)
    ours = ModelCheckpoint(name, save_freq=2)
    assert ours.decides_on_batch is True
    result = run_distcb([ours], logs, batch_logs)
    assert saves(result) == keras_saved
    assert [os.path.basename(p) for p in keras_saved] == [
        "b-1-2.keras",
        "b-2-1.keras",
        "b-2-3.keras",
    ]
    assert {d.at.phase for d in result.decisions} == {"batch"}


def test_period_parity_with_tf_keras(tmp_path: Any) -> None:
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse")
    keras_saved = recording(model)
    name = str(tmp_path / "p-{epoch}.keras")
    keras_cb = tf_keras.callbacks.ModelCheckpoint(name, period=2)
    keras_cb.set_model(model)
    keras_cb.on_train_begin()
    logs = losses([1.0, 0.9, 0.8, 0.7, 0.6])
    for epoch, epoch_logs in enumerate(logs):
        keras_cb.on_epoch_begin(epoch)
        keras_cb.on_epoch_end(epoch, dict(epoch_logs))
    result = run_distcb([ModelCheckpoint(name, period=2)], logs)
    assert saves(result) == keras_saved
    assert [os.path.basename(p) for p in keras_saved] == ["p-2.keras", "p-4.keras"]


def test_best_only_with_batch_frequency_works(tmp_path: Any) -> None:
    """Keras 3.15 crashes here (its comparison is only set up at epoch end); distcb does not."""
    name = str(tmp_path / "b-{epoch}-{batch}.keras")
    ours = ModelCheckpoint(name, monitor="loss", save_best_only=True, save_freq=1)
    batch_logs = [[{"loss": 1.0}, {"loss": 0.9}, {"loss": 0.95}, {"loss": 0.8}]]
    result = run_distcb([ours], losses([0.8]), batch_logs)
    assert [os.path.basename(p) for p in saves(result)] == [
        "b-1-1.keras",
        "b-1-2.keras",
        "b-1-4.keras",
    ]
    assert ours.best == 0.8


def test_workers_disagree_path_uses_aggregated_logs_and_only_the_chief_saves(
    tmp_path: Any,
) -> None:
    name = str(tmp_path / "ckpt" / "m-{epoch}-{val_loss:.3f}.keras")
    epoch_logs = [
        [{"loss": 1.0, "val_loss": 1.0}, {"loss": 1.0, "val_loss": 2.0}],
        [{"loss": 1.0, "val_loss": 0.5}, {"loss": 1.0, "val_loss": 2.5}],
    ]
    ours = ModelCheckpoint(name, save_best_only=True)
    result = simulate(
        [ours],
        epoch_logs,
        params={"learning_rate": 0.01, "directions": {"loss": "min"}},
        val_samples=[[300, 100]] * 2,
    )
    # (1.0 * 300 + 2.0 * 100) / 400 = 1.25, then (0.5 * 300 + 2.5 * 100) / 400 = 1.0.
    assert [os.path.basename(p) for p in saves(result)] == ["m-1-1.250.keras", "m-2-1.000.keras"]
    assert len(result.workers[0].saves) == 2
    assert result.workers[1].saves == []
    assert [s.filepath for s in result.coordinator.recent_saved] == saves(result)
    assert os.path.isdir(tmp_path / "ckpt")


def test_best_only_missing_monitor_warns(tmp_path: Any) -> None:
    cb = ModelCheckpoint(str(tmp_path / "m.keras"), save_best_only=True)
    with pytest.warns(UserWarning, match="Can save best model only with val_loss available"):
        result = run_distcb([cb], [{"loss": 1.0}])
    assert len(saves(result)) == 1


def test_format_and_directory_errors(tmp_path: Any) -> None:
    cb = ModelCheckpoint(str(tmp_path / "m-{epoch}-{val_auc}.keras"))
    cb.set_model(ModelProxy(DecisionRecorder()))
    with pytest.raises(KeyError, match="Failed to format this callback filepath"):
        cb.on_epoch_end(0, {"loss": 1.0})
    (tmp_path / "taken.keras").mkdir()
    cb = ModelCheckpoint(str(tmp_path / "taken.keras"))
    cb.set_model(ModelProxy(DecisionRecorder()))
    with pytest.raises(IsADirectoryError, match="existing directory"):
        cb.on_epoch_end(0, {"loss": 1.0})


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("m.hdf5",), {}, ValueError, r"must end in `.keras`.*filepath=m.hdf5"),
        (("m.ckpt",), {}, ValueError, "Received: filepath=m.ckpt"),
        (("m.keras",), {"save_weights_only": True}, ValueError, "must end in `.weights.h5`"),
        (("m.keras",), {"save_freq": "batch"}, ValueError, "Unrecognized save_freq: 'batch'"),
        (("m.keras",), {"save_freq": 0}, ValueError, "Unrecognized save_freq: 0"),
        (("m.keras",), {"save_freq": True}, ValueError, "Unrecognized save_freq: True"),
        (("m.keras",), {"period": 0}, ValueError, "period must be >= 1, received 0"),
        (("m.keras",), {"period": 2, "save_freq": 10}, ValueError, "needs save_freq='epoch'"),
        (("m.keras",), {"mode": None}, TypeError, "mode must be one of"),
        ((3,), {}, TypeError, "filepath must be a str or os.PathLike, received 3"),
    ],
)
def test_bad_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ModelCheckpoint(*args, **kwargs)


def test_mode_is_needed_only_for_save_best_only(tmp_path: Any) -> None:
    result = run_distcb([ModelCheckpoint(str(tmp_path / "m.keras"), monitor="wobble")], losses([1]))
    assert len(saves(result)) == 1
    with pytest.raises(ValueError, match="'wobble', which is not a metric this job reports"):
        run_distcb(
            [ModelCheckpoint(str(tmp_path / "m.keras"), monitor="wobble", save_best_only=True)],
            losses([1]),
        )


def test_state_round_trip_is_json(tmp_path: Any) -> None:
    name = str(tmp_path / "m.keras")
    cb = ModelCheckpoint(name, save_best_only=True, period=2)
    run_distcb([cb], losses([1.0, 0.9, 0.8]))
    state = json.loads(json.dumps(cb.get_state(), allow_nan=False))
    assert state["best"] == 0.9
    assert state["epochs_since_last_save"] == 1
    assert state["saved"] == [os.path.abspath(name)]
    resumed = ModelCheckpoint(name, save_best_only=True, period=2)
    resumed.set_state(state)
    result = run_distcb([resumed], losses([0.95]))
    assert saves(result) == []  # due by period, but 0.95 does not beat 0.9
