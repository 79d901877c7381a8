"""TensorFlow's start-up lines, dropped from what the launchers show.

``import tensorflow`` (2.21) writes these through absl before its logging is set up, so
``TF_CPP_MIN_LOG_LEVEL`` does not silence them::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796457718.704207    4717 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796457718.705038    4717 cudart_stub.cc:31] Could not find cuda drivers ...

The launchers copy their workers' output line by line; they drop the lines of C++ log
levels that the worker's ``TF_CPP_MIN_LOG_LEVEL`` asks to hide (1: INFO, 2: WARNING too,
3: ERROR too; workers get 3 unless the user set another), as TensorFlow would if it could.
`filtered_stderr` does the same for a launcher's own imports (a script's
``distcb_callbacks`` loaded with its ``import tensorflow``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping

ENV_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_BEFORE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to"
# absl's prefix: severity letter, MMDD, time, thread id, file:line]
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] ")
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}


def min_level(env: Mapping[str, str]) -> int:
    """The ``TF_CPP_MIN_LOG_LEVEL`` of an environment (0 when unset or not a number)."""
    try:
        return int(env.get(ENV_LEVEL, "0"))
    except ValueError:
        return 0


def is_hidden(line: str, level: int) -> bool:
    """Whether `line` is an absl log line below `level` (TensorFlow's meaning of it)."""
    if level < 1:
        return False
    if line.startswith(_BEFORE_INIT):
        return True
    match = _ABSL_LINE.match(line)
    return match is not None and _LEVELS[match.group(1)] < level


@contextlib.contextmanager
def filtered_stderr(level: int | None = None) -> Iterator[None]:
    """Inside, file descriptor 2 goes to a temporary file; on leaving, what it received is
    written to stderr without the lines `is_hidden` drops (`level`: this process's
    ``TF_CPP_MIN_LOG_LEVEL`` by default)."""
    level = min_level(os.environ) if level is None else level
    if level < 1:
        yield
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_hidden(line, level)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
