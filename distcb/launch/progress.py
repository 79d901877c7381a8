"""One progress display per job, driven by the coordinator's epoch ends.

    epoch 212/4000  loss 0.2093  val_loss 0.2518  best val_loss 0.2497 (epoch 180)  ETA 6m31s

Interactive (the stream is a terminal, or this is a Jupyter kernel) it is one line
rewritten in place (``\\r``), at most every `REFRESH_S`; otherwise (a log file, CI) it is a
new line every `interval_s` seconds, spaced out as the job goes on (at most every tenth of
the time it has run, at least once every `MAX_INTERVAL_S`: a long job's log stays short),
plus the first and the last epoch. When the job ends,
one summary line says how it ended: "stopped by Ctrl-C after epoch 212; best checkpoint at
runs/moons/best_model.h5", "recovered from 1 failure: rank 1 was killed by signal SIGKILL
at epoch 9". `distcb.run(progress=False)` and ``distcb launch --no-progress`` turn it off.

It listens to the coordinator (`JobListener`) on the coordinator's event loop, and
writes only to its stream: it never blocks the job beyond one short write.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.coordinator.model_proxy import DecisionRecord
from distcb.protocol.errors import WorkerLostError
from distcb.protocol.logs import Logs
from distcb.protocol.messages import Saved
from distcb.protocol.metrics import direction_by_name

REFRESH_S = 0.2  # an interactive line is rewritten at most this often
INTERVAL_S = 5.0  # a non-interactive line at most this often
MAX_INTERVAL_S = 60.0  # ... and at least this often
MAX_METRICS = 4


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def is_interactive(stream: Any) -> bool:
    """A person watches `stream`: a terminal, or a notebook's output."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return in_notebook()


def format_duration(seconds: float) -> str:
    """``45s``, ``6m31s``, ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class JobProgress(JobListener):
    """The progress display of one job (see the module docstring).

    Args:
        coordinator: the job's coordinator (its params, callbacks and restarts are read).
        stream: where the display goes (default: stderr).
        interactive: rewrite one line in place; None: when `stream` is a terminal or this
            is a notebook.
        interval_s: seconds between lines when not interactive.
        clock: seconds, monotonic (tests pass their own).
        show: show the progress lines (False: only the summary line at the end).
        exit_of: rank -> how its process ended ("was killed by signal SIGKILL"), when the
            launcher knows; the recovery line says that rather than what the coordinator saw.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        show: bool = True,
        exit_of: Callable[[int], str | None] | None = None,
    ):
        if isinstance(interval_s, bool) or not isinstance(interval_s, int | float):
            raise TypeError(f"interval_s must be a number of seconds, received {interval_s!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, received {interval_s!r}")
        self.coordinator = coordinator
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = is_interactive(self.stream) if interactive is None else interactive
        self.interval_s = float(interval_s)
        self.clock = clock
        self.show = show
        self.exit_of = exit_of
        self.last_epoch: int | None = None  # the last epoch released (0-based)
        self.best: tuple[float, int] | None = None  # (value, epoch) of the key metric
        self.last_saved: str | None = None
        self.recoveries: list[tuple[BaseException, int]] = []  # (failure, epoch it hit)
        self._started: tuple[float, int] | None = None  # (time, epoch) of the first release
        self._last_line = ""
        self._last_logs: Logs = {}
        self._began: float | None = None  # the first epoch end seen
        self._last_write: float | None = None
        self._shown_epoch: int | None = None  # the epoch of the last line written
        self._width = 0  # of the interactive line on screen (0: none)

    # ------------------------------------------------------------------ the listener

    def epoch_released(self, epoch: int, logs: Logs, records: Sequence[DecisionRecord]) -> None:
        now = self.clock()
        if self._started is None:
            self._started = (now, epoch)
        if self._began is None:
            self._began = now
        self.last_epoch = epoch
        self._track_best(epoch, logs)
        self._last_logs = dict(logs)
        self._last_line = self.line(epoch, logs, now)
        due = self._last_write is None or now - self._last_write >= self._interval(now)
        if due and self.show:
            self._show(now, epoch)

    def _interval(self, now: float) -> float:
        if self.interactive:
            return REFRESH_S
        ran_s = now - (self._began if self._began is not None else now)
        return max(self.interval_s, min(MAX_INTERVAL_S, ran_s / 10))

    def saved(self, message: Saved) -> None:
        if message.error is None:
            self.last_saved = message.filepath

    def restarting(self, attempt: int, failure: BaseException) -> None:
        in_epoch = 0 if self.last_epoch is None else self.last_epoch + 1
        if isinstance(failure, WorkerLostError) and self.exit_of is not None:
            seen = self.exit_of(failure.rank)
            if seen is not None:
                failure = WorkerLostError(failure.rank, seen)
        self.recoveries.append((failure, in_epoch))
        self._started = None  # the ETA measures the new attempt's pace

    def ended(self, failure: BaseException | None) -> None:
        if self.show and self._last_line and self.last_epoch is not None:
            # The last epoch is always shown, without an ETA: the job is over.
            self._last_line = self.line(self.last_epoch, self._last_logs, None)
            if self._shown_epoch != self.last_epoch or self.interactive:
                self._show(self.clock(), self.last_epoch)
        if self._width:
            self._write("\n")
            self._width = 0
        if failure is None:
            for text in self.summary():
                self._write(text + "\n")

    # ------------------------------------------------------------------ what it says

    def key_metric(self, logs: Logs) -> tuple[str, str]:
        """``(name, "min" | "max")``: the first monitored metric of the callbacks, else
        ``val_loss`` when the workers validate, else ``loss``."""
        params = self.coordinator.params or {}
        directions = params.get("directions") or {}
        for callback in self.coordinator.callbacks.callbacks:
            name = getattr(callback, "monitor", None)
            if isinstance(name, str) and name:
                mode = getattr(callback, "direction", None) or getattr(callback, "mode", None)
                if mode not in ("min", "max"):
                    mode = directions.get(name) or direction_by_name(name) or "min"
                return name, str(mode)
        return ("val_loss" if "val_loss" in logs else "loss"), "min"

    def shown_metrics(self, logs: Logs) -> list[str]:
        names = ["loss", "val_loss"]
        names += [
            n
            for cb in self.coordinator.callbacks.callbacks
            if isinstance(n := getattr(cb, "monitor", None), str)
        ]
        names += [n for n in logs if n.endswith("accuracy")]
        seen: list[str] = []
        for name in names:
            if name in logs and name not in seen and _number(logs[name]) is not None:
                seen.append(name)
        return seen[:MAX_METRICS]

    def line(self, epoch: int, logs: Logs, now: float | None) -> str:
        """The progress line after epoch `epoch` (0-based) with `logs` (`now` None: no ETA)."""
        epochs = self.coordinator.params.get("epochs")
        parts = [f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}"]
        parts += [f"{n} {_number(logs[n]):.4g}" for n in self.shown_metrics(logs)]
        if self.best is not None:
            name, _ = self.key_metric(logs)
            parts.append(f"best {name} {self.best[0]:.4g} (epoch {self.best[1] + 1})")
        eta = None if now is None else self.eta_s(epoch, now)
        if eta:
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def eta_s(self, epoch: int, now: float) -> float | None:
        """Seconds to the planned last epoch at the pace so far (an early stop comes sooner)."""
        epochs = self.coordinator.params.get("epochs")
        if self._started is None or not epochs:
            return None
        began, first = self._started
        done = epoch - first
        if done < 1:
            return None
        return (now - began) / done * max(0, int(epochs) - (epoch + 1))

    def summary(self) -> list[str]:
        """How the job ended, one line (or none)."""
        lines = []
        epoch = "none" if self.last_epoch is None else str(self.last_epoch + 1)
        reason = self.coordinator.stop_requested
        if reason is not None:
            text = f"stopped by {reason} after epoch {epoch}"
            if self.last_saved is not None:
                text += f"; {self._checkpoint_kind()} checkpoint at {self.last_saved}"
            lines.append(text)
        if self.recoveries:
            count = len(self.recoveries)
            what = "; ".join(_describe_failure(f, e) for f, e in self.recoveries)
            lines.append(f"recovered from {count} failure{'s' if count > 1 else ''}: {what}")
        return lines

    # ------------------------------------------------------------------ writing

    def note(self, text: str) -> None:
        """A message of its own line (an interactive progress line is ended first)."""
        if self._width:
            self._write("\n")
            self._width = 0
        self._write(f"distcb: {text}\n")

    def _checkpoint_kind(self) -> str:
        best = any(
            getattr(cb, "save_best_only", False) for cb in self.coordinator.callbacks.callbacks
        )
        return "best" if best else "last"

    def _track_best(self, epoch: int, logs: Logs) -> None:
        name, mode = self.key_metric(logs)
        value = _number(logs.get(name))
        if value is None or math.isnan(value):
            return
        if self.best is None or (value < self.best[0] if mode == "min" else value > self.best[0]):
            self.best = (value, epoch)

    def _show(self, now: float, epoch: int | None) -> None:
        self._last_write = now
        self._shown_epoch = epoch
        if self.interactive:
            pad = max(0, self._width - len(self._last_line))
            self._write("\r" + self._last_line + " " * pad)
            self._width = len(self._last_line)
        else:
            self._write(self._last_line + "\n")

    def _write(self, text: str) -> None:
        with contextlib.suppress(Exception):  # a closed stream must not fail the job
            self.stream.write(text)
            self.stream.flush()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _describe_failure(failure: BaseException, epoch: int) -> str:
    if isinstance(failure, WorkerLostError):
        return f"rank {failure.rank} {failure.reason} at epoch {epoch + 1}"
    return f"{type(failure).__name__}: {failure} at epoch {epoch + 1}"
