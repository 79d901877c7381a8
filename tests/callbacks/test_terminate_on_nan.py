"""TerminateOnNaN: parity with Keras 3 on one worker; one worker's NaN stops all of them."""

from __future__ import annotations

from typing import Any

import pytest

from distcb.callbacks import TerminateOnNaN
from distcb.protocol.config import Config
from distcb.protocol.decisions import StopTraining
from distcb.testing import simulate
from tests.helpers.keras_run import losses, run_distcb

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_parity_with_keras(bad: float, keras: Any, run_keras: Any, capsys: Any) -> None:
    epoch_logs = losses([1.0, 0.9, 0.8])
    batch_logs = [[{"loss": 1.0}, {"loss": 1.0}]] * 3
    batch_logs[1] = [{"loss": 1.0}, {"loss": bad}, {"loss": 0.5}]
    keras_run = run_keras([keras.callbacks.TerminateOnNaN()], epoch_logs, batch_logs)
    keras_out = capsys.readouterr().out
    result = run_distcb([TerminateOnNaN()], epoch_logs, batch_logs)
    assert keras_run.stopped_epoch == result.stopped_epoch == 1
    assert result.history.epoch == [0, 1]
    assert "Batch 1: Invalid loss, terminating training" in keras_out
    assert "Batch 1: Invalid loss, terminating training" in capsys.readouterr().out
    (stop,) = result.decisions
    assert isinstance(stop, StopTraining)
    assert stop.at.phase == "batch"
    assert stop.at.epoch == 1


def test_one_worker_nan_stops_every_worker_at_the_same_step() -> None:
    steps = 8
    batch_logs = [[[{"loss": 0.5}, {"loss": NAN if s == 2 else 0.5}] for s in range(steps)]]
    window = 2
    result = simulate(
        [TerminateOnNaN()],
        [[{"loss": 0.5}, {"loss": 0.5}]],
        batch_logs=batch_logs,
        params={"learning_rate": 0.01, "directions": {"loss": "min"}, "steps": steps},
        config=Config(window_steps=window),
    )
    (stop,) = result.decisions
    assert isinstance(stop, StopTraining)
    assert stop.at.step == 2 + window + 1
    applied = [
        [(a.epoch, a.step) for a in w.applied if isinstance(a.decision, StopTraining)]
        for w in result.workers
    ]
    assert applied == [[(0, 5)], [(0, 5)]]
    # No worker had begun a step past the effect step when it applied the stop.
    assert all(a.max_step_begun <= 5 for w in result.workers for a in w.applied)
    assert result.stopped_epoch == 0
    assert [w.epochs_run for w in result.workers] == [1, 1]


def test_one_worker_inf_makes_the_aggregate_inf() -> None:
    batch_logs = [[[{"loss": 0.5}, {"loss": 0.5}], [{"loss": INF}, {"loss": 0.5}]]]
    seen: list[float] = []

    class Spy(TerminateOnNaN):
        def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            seen.append((logs or {})["loss"])
            super().on_batch_end(batch, logs)

    result = simulate(
        [Spy()],
        [[{"loss": 0.5}, {"loss": 0.5}]],
        batch_logs=batch_logs,
        params={"learning_rate": 0.01},
    )
    assert seen == [0.5, INF]
    assert result.stopped_epoch == 0


def test_raise_error(keras: Any, run_keras: Any) -> None:
    batch_logs = [[{"loss": 1.0}, {"loss": NAN}]]
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 1"):
        run_keras([keras.callbacks.TerminateOnNaN(raise_error=True)], losses([1.0]), batch_logs)
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 1"):
        run_distcb([TerminateOnNaN(raise_error=True)], losses([1.0]), batch_logs)


def test_ignores_missing_or_odd_loss_and_checks_arguments() -> None:
    result = run_distcb(
        [TerminateOnNaN()], losses([1.0]), [[{"accuracy": NAN}, {"loss": "n/a"}, {"loss": 1.0}]]
    )
    assert result.decisions == []
    assert result.stopped_epoch is None
    with pytest.raises(TypeError, match="raise_error must be a bool, received 'yes'"):
        TerminateOnNaN(raise_error="yes")  # type: ignore[arg-type]
