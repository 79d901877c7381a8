"""LambdaCallback: Keras 3 and Keras 2 hook names, aggregated logs, argument checks."""

from __future__ import annotations

from typing import Any

import pytest

from distcb.callbacks import LambdaCallback
from distcb.protocol.decisions import StopTraining
from distcb.testing import simulate
from tests.helpers.keras_run import losses, run_distcb


def recorder(calls: list[tuple[Any, ...]], names: dict[str, str]) -> dict[str, Any]:
    """Functions for LambdaCallback that record (hook, args...) under the hook's Keras 3 name."""

    def make(hook: str) -> Any:
        def fn(*args: Any) -> None:
            *index, logs = args
            calls.append((hook, *index, dict(logs or {})))

        return fn

    return {arg: make(hook) for arg, hook in names.items()}


KERAS3 = {n: n for n in ("on_train_begin", "on_epoch_begin", "on_train_batch_begin")}
KERAS3 |= {n: n for n in ("on_train_batch_end", "on_epoch_end", "on_train_end")}
KERAS2 = {
    "on_batch_begin": "on_train_batch_begin",
    "on_batch_end": "on_train_batch_end",
    "on_epoch_end": "on_epoch_end",
}


def test_same_calls_as_keras(keras: Any, run_keras: Any) -> None:
    logs = losses([1.0, 0.5])
    batch_logs = [[{"loss": 1.5}, {"loss": 1.25}], [{"loss": 0.75}, {"loss": 0.5}]]
    keras_calls: list[tuple[Any, ...]] = []
    run_keras([keras.callbacks.LambdaCallback(**recorder(keras_calls, KERAS3))], logs, batch_logs)
    our_calls: list[tuple[Any, ...]] = []
    run_distcb([LambdaCallback(**recorder(our_calls, KERAS3))], logs, batch_logs)
    assert our_calls == keras_calls
    assert [c[0] for c in our_calls[:4]] == [
        "on_train_begin",
        "on_epoch_begin",
        "on_train_batch_begin",
        "on_train_batch_end",
    ]


def test_keras2_names_get_aggregated_logs() -> None:
    calls: list[tuple[Any, ...]] = []
    cb = LambdaCallback(**recorder(calls, KERAS2))
    assert cb.decides_on_batch is True
    simulate(
        [cb],
        [[{"loss": 1.0}, {"loss": 3.0}]],
        batch_logs=[[[{"loss": 2.0}, {"loss": 4.0}]]],
        params={"learning_rate": 0.01},
    )
    assert calls == [
        ("on_train_batch_begin", 0, {}),
        ("on_train_batch_end", 0, {"loss": 3.0}),
        ("on_epoch_end", 0, {"loss": 2.0}),
    ]


def test_batch_hook_can_stop_every_worker() -> None:
    cb = LambdaCallback(
        on_train_batch_end=lambda batch, logs: setattr(cb.model, "stop_training", batch == 1)
    )
    result = run_distcb([cb], losses([1.0, 1.0]), [[{"loss": 1.0}] * 3] * 2)
    (stop,) = result.decisions
    assert isinstance(stop, StopTraining)
    assert stop.at.phase == "batch"
    assert result.stopped_epoch == 0


def test_epoch_only_lambda_does_not_hold_workers_back() -> None:
    cb = LambdaCallback(on_epoch_end=lambda epoch, logs: None)
    assert cb.decides_on_batch is False
    result = run_distcb([cb], losses([1.0]), [[{"loss": 1.0}] * 3])
    assert result.coordinator.recorder.window_steps is None


def test_bad_arguments() -> None:
    # Keras attaches unknown keyword arguments; one that looks like a hook gets a warning.
    with pytest.warns(UserWarning, match=r"\['on_epoch_ned'\] are not hooks Keras calls"):
        assert LambdaCallback(on_epoch_ned=print).on_epoch_ned is print  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"\['set_model'\] would hide the callback's own"):
        LambdaCallback(set_model=print)
    with pytest.raises(ValueError, match="both on_batch_end .* and on_train_batch_end"):
        LambdaCallback(on_batch_end=print, on_train_batch_end=print)
    with pytest.raises(TypeError, match="on_train_end must be callable, received 3"):
        LambdaCallback(on_train_end=3)  # type: ignore[arg-type]
    assert LambdaCallback().get_state() == {}


def test_every_keras3_hook_and_extra_attributes_are_accepted(keras: Any) -> None:
    """As keras.callbacks.LambdaCallback: any hook, called however Keras passes `logs`."""
    calls: list[tuple[Any, ...]] = []
    hooks = {
        "on_test_begin": lambda logs: calls.append(("test_begin", logs)),
        "on_predict_batch_end": lambda batch, logs: calls.append(("predict_batch", batch, logs)),
    }
    ours, theirs = (
        LambdaCallback(helper=len, **hooks),
        keras.callbacks.LambdaCallback(helper=len, **hooks),
    )
    for callback in (theirs, ours):
        callback.on_test_begin({"a": 1})
        callback.on_predict_batch_end(2, logs={"b": 2})
        callback.on_epoch_end(0, {})  # not given: the base hook does nothing
        assert callback.helper("abc") == 3
    assert calls[:2] == calls[2:] == [("test_begin", {"a": 1}), ("predict_batch", 2, {"b": 2})]


def test_hooks_that_cannot_fire_on_the_coordinator_warn_once() -> None:
    cb = LambdaCallback(
        on_test_begin=print, on_predict_end=print, on_epoch_end=lambda e, logs: None
    )
    with pytest.warns(UserWarning, match=r"\['on_test_begin', 'on_predict_end'\] never fire") as w:
        run_distcb([cb], losses([1.0, 0.5]))
    assert len(w) == 1
