"""Where callbacks' verbose messages go: Keras's convention, without importing Keras.

Keras prints a callback's message to stdout when *interactive logging* is on
(its default) and otherwise logs it at INFO through ``absl.logging``; a job
that runs without a terminal (Kubernetes, CI) calls
``keras.config.disable_interactive_logging()`` to get the logging path.
:func:`print_msg` does the same:

- whether logging is interactive: the value given to
  :func:`set_interactive_logging` if any; else, when Keras 3 or tf_keras is
  already imported, its own ``is_interactive_logging_enabled()`` (asked at
  call time, on the calling thread: Keras keeps this setting per thread); else
  True, Keras's default. (With both imported, either one switched off is enough.)
- the logging path: the ``absl`` logger when Keras 3 or tf_keras is imported
  (where Keras's own messages go, so ``keras.utils.set_logging_verbosity``
  applies), else the ``distcb.callbacks`` logger.

On distcb's coordinator, callbacks run on a thread of their own, which Keras's
per-thread switch set in the main thread does not reach: call
``set_interactive_logging(False)`` there.
"""

from __future__ import annotations

import logging
import sys

_KERAS_IO_UTILS = ("keras.src.utils.io_utils", "tf_keras.src.utils.io_utils")

_interactive: bool | None = None


def set_interactive_logging(enabled: bool | None) -> None:
    """Send messages to stdout (True) or to logging (False) in every thread; None: as Keras does.

    Raises:
        TypeError: `enabled` is neither a bool nor None.
    """
    global _interactive
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, received {enabled!r}.")
    _interactive = enabled


def _keras_io_utils() -> list[object]:
    return [m for m in (sys.modules.get(name) for name in _KERAS_IO_UTILS) if m is not None]


def is_interactive_logging_enabled() -> bool:
    """Whether :func:`print_msg` writes to stdout (True) or logs (False), as decided now."""
    if _interactive is not None:
        return _interactive
    for module in _keras_io_utils():
        enabled = getattr(module, "is_interactive_logging_enabled", None)
        if callable(enabled) and not enabled():
            return False
    return True


def message_logger() -> logging.Logger:
    """The logger :func:`print_msg` uses when logging is not interactive."""
    return logging.getLogger("absl" if _keras_io_utils() else "distcb.callbacks")


def print_msg(message: str) -> None:
    """Print `message` (one line) to stdout, or log it at INFO: see the module docstring."""
    if is_interactive_logging_enabled():
        sys.stdout.write(f"{message}\n")
        sys.stdout.flush()
    else:
        message_logger().info(message)
