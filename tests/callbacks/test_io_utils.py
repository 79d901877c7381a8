"""Callbacks' verbose messages follow Keras's convention: stdout when logging is interactive,
else logging (absl's logger when Keras is imported, as Keras's own messages)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from distcb.callbacks import EarlyStopping, ReduceLROnPlateau
from distcb.callbacks.io_utils import (
    is_interactive_logging_enabled,
    print_msg,
    set_interactive_logging,
)
from distcb.testing import simulate


@pytest.fixture
def keras_io(keras: Any) -> Any:
    from keras.src.utils import io_utils

    yield io_utils
    io_utils.enable_interactive_logging()
    set_interactive_logging(None)


def test_interactive_prints_to_stdout_like_keras(keras_io: Any, capsys: Any) -> None:
    keras_io.print_msg("from keras")
    print_msg("from distcb")
    assert capsys.readouterr().out == "from keras\nfrom distcb\n"


def test_non_interactive_logs_where_keras_logs(
    keras_io: Any, capsys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    keras_io.disable_interactive_logging()
    with caplog.at_level(logging.INFO):
        keras_io.print_msg("from keras")
        print_msg("from distcb")
    assert capsys.readouterr().out == ""
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("absl", logging.INFO, "from keras"),
        ("absl", logging.INFO, "from distcb"),
    ]


def test_a_callback_message_takes_the_logging_path(
    keras_io: Any, capsys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    keras_io.disable_interactive_logging()
    stopper = EarlyStopping(monitor="loss", patience=0, verbose=1)
    with caplog.at_level(logging.INFO):
        simulate([stopper], [[{"loss": 1.0}], [{"loss": 2.0}]], params={"learning_rate": 0.1})
    # Keras's switch is per thread: simulate runs hooks on the coordinator's thread.
    assert "Epoch 2: early stopping" in capsys.readouterr().out
    set_interactive_logging(False)  # distcb's switch reaches every thread
    reducer = ReduceLROnPlateau(monitor="loss", patience=0, verbose=1)
    with caplog.at_level(logging.INFO):
        simulate([reducer], [[{"loss": 1.0}], [{"loss": 2.0}]], params={"learning_rate": 0.1})
    assert capsys.readouterr().out == ""
    assert any(
        "ReduceLROnPlateau reducing learning rate to 0.01" in r.getMessage() for r in caplog.records
    )


def test_distcb_switch_wins_over_keras_in_every_thread(keras_io: Any) -> None:
    seen = []

    def ask() -> None:
        seen.append(is_interactive_logging_enabled())

    set_interactive_logging(False)
    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    set_interactive_logging(True)
    keras_io.disable_interactive_logging()
    ask()
    set_interactive_logging(None)
    ask()
    assert seen == [False, True, False]
    with pytest.raises(TypeError, match="enabled must be True, False or None, received 0"):
        set_interactive_logging(0)  # type: ignore[arg-type]


def test_without_keras_messages_go_to_the_distcb_logger() -> None:
    """A coordinator process without Keras: callbacks import, messages go to logging."""
    code = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
import distcb.callbacks
for name in distcb.callbacks.__all__:  # every callback imports without Keras or TensorFlow
    getattr(distcb.callbacks, name)
from distcb.callbacks.io_utils import print_msg, set_interactive_logging
print_msg("interactive")
set_interactive_logging(False)
print_msg("logged")
print(sorted(m for m in ("keras", "tf_keras", "tensorflow") if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.splitlines() == ["interactive", "distcb.callbacks logged", "[]"]
