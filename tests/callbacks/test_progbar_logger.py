"""ProgbarLogger: one bar for the whole job, on the coordinator's stdout."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import pytest

from distcb.callbacks import ProgbarLogger
from distcb.testing import simulate

TWO_WORKERS_EPOCH = [{"loss": 0.5, "val_loss": 0.25}, {"loss": 0.5, "val_loss": 0.75}]
TWO_WORKERS_BATCHES = [[{"loss": 1.0 - 0.1 * s}, {"loss": 1.0 - 0.1 * s}] for s in range(4)]


def ticking_clock() -> Any:
    """Each call is one second later than the last."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


def run(cb: ProgbarLogger, epochs: int = 2, **params: Any) -> Any:
    return simulate(
        [cb],
        [TWO_WORKERS_EPOCH] * epochs,
        batch_logs=[TWO_WORKERS_BATCHES] * epochs,
        params={"learning_rate": 0.01, "verbose": 1, **params},
    )


def test_one_bar_counts_global_steps_with_eta(capsys: Any) -> None:
    result = run(ProgbarLogger(force=True, interval_s=0, clock=ticking_clock()))
    epoch_lines = [
        "2/8 [=======>......................] - ETA: 3s - loss: 1.0000",
        "4/8 [===============>..............] - ETA: 2s - loss: 0.9000",
        "6/8 [======================>.......] - ETA: 1s - loss: 0.8000",
        "8/8 [==============================] - ETA: 0s - loss: 0.7000",
        "8/8 [==============================] - 5s 625ms/step - loss: 0.5000 - val_loss: 0.5000",
    ]
    out = capsys.readouterr().out
    assert out.splitlines() == ["Epoch 1/2", *epoch_lines, "Epoch 2/2", *epoch_lines]
    # It only observes: workers are never held back by the window.
    assert result.coordinator.recorder.window_steps is None
    assert result.decisions == []


def test_throttled_redraws(capsys: Any) -> None:
    run(ProgbarLogger(force=True, interval_s=10, clock=ticking_clock()), epochs=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "2/8 [=======>......................] - ETA: 3s - loss: 1.0000",
        "8/8 [==============================] - 5s 625ms/step - loss: 0.5000 - val_loss: 0.5000",
    ]


def test_samples_mode_counts_every_worker_samples(capsys: Any) -> None:
    cb = ProgbarLogger("samples", force=True, interval_s=0, clock=ticking_clock())
    run(cb, epochs=1, samples=64, batch_size=16, steps=4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(" 32/128 [=======>")
    assert lines[-1].startswith("128/128 [==============================] - 5s 39ms/sample")


def test_verbose_2_prints_one_line_per_epoch(capsys: Any) -> None:
    run(ProgbarLogger(clock=ticking_clock()), verbose=2)  # even when stdout is not a terminal
    assert capsys.readouterr().out.splitlines() == [
        "Epoch 1/2",
        "8/8 - 5s - 625ms/step - loss: 0.5000 - val_loss: 0.5000",
        "Epoch 2/2",
        "8/8 - 5s - 625ms/step - loss: 0.5000 - val_loss: 0.5000",
    ]


@pytest.mark.parametrize(("force", "verbose"), [(False, 1), (True, 0), (False, "auto")])
def test_quiet(force: bool, verbose: Any, capsys: Any) -> None:
    """Quiet with verbose=0 (as Keras), and for a live bar when stdout is not a terminal."""
    run(ProgbarLogger(force=force), verbose=verbose)
    assert capsys.readouterr().out == ""


def test_live_bar_on_a_terminal_redraws_in_place(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    run(ProgbarLogger(interval_s=0, clock=ticking_clock()), epochs=1)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("\r2/8 [")
    assert out.endswith(
        "\r8/8 [==============================] - 5s 625ms/step - loss: 0.5000 - val_loss: 0.5000\n"
    )


def test_unknown_steps_and_keras2_batch_values(capsys: Any) -> None:
    cb = ProgbarLogger(stateful_metrics=["lr"], force=True, interval_s=0, clock=ticking_clock())
    cb.set_params({"epochs": 1, "verbose": 1})
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    # Keras 2.3 convention: each batch's own value and its size, averaged by size.
    cb.on_train_batch_end(0, {"batch": 0, "size": 10, "loss": 1.0, "lr": 0.1})
    cb.on_train_batch_end(1, {"batch": 1, "size": 30, "loss": 2.0, "lr": 0.05})
    cb.on_epoch_end(0, {"loss": 1.75})
    assert capsys.readouterr().out.splitlines() == [
        "      1/Unknown - 1s 1s/step - loss: 1.0000 - lr: 0.1000",
        "      2/Unknown - 2s 1s/step - loss: 1.7500 - lr: 0.0500",
        "2/2 [==============================] - 3s 2s/step - loss: 1.7500",
    ]


def test_epoch_logs_only(capsys: Any) -> None:
    cb = ProgbarLogger(clock=ticking_clock())
    simulate([cb], [[{"loss": 0.5}]], params={"verbose": 2})
    assert capsys.readouterr().out == "1s - loss: 0.5000\n"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Unknown `count_mode`: 'batches'"):
        ProgbarLogger("batches")
    with pytest.raises(TypeError, match=r"pass \['loss'\]"):
        ProgbarLogger(stateful_metrics="loss")
    assert ProgbarLogger().count_mode == "steps"  # the Keras 3 no-argument form


def test_imports_no_keras() -> None:
    code = (
        "import sys, distcb.callbacks.progbar_logger; "
        "bad = {m.split('.')[0] for m in sys.modules} & {'keras', 'tf_keras', 'tensorflow'}; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
