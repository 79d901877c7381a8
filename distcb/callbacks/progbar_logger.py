"""ProgbarLogger: one progress bar for the whole job, on the coordinator's stdout.

Imports no Keras: the coordinator may run where Keras is not installed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from distcb.callbacks.base import Callback, Logs

_NOT_METRICS = ("batch", "size", "num_steps")
_BAR_WIDTH = 30


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return str(value)
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


def _format_eta(seconds: float) -> str:
    if seconds > 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds > 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(seconds)}s"


def _format_rate(seconds: float, unit: str) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit}"
    return f"{seconds * 1e6:.0f}us/{unit}"


class ProgbarLogger(Callback):
    """Print one progress bar per epoch for the whole job, with aggregated metrics and an ETA.

    Accepts the Keras 2 arguments and the Keras 3 no-argument form. Progress is
    counted over the job: in "steps" mode the bar counts global steps (the steps
    of all workers: ``params["steps"] * params["num_workers"]``), in "samples"
    mode the samples of all workers (``params["samples"]``), falling back to steps
    when the workers did not report sample counts. Without `count_mode` it counts
    steps, as Keras 3 (and tf_keras's own fit progress bar) do.

    What is printed follows ``params["verbose"]`` as in Keras: 0 prints nothing,
    2 one line per epoch, 1 (or "auto", or absent) a live bar. The live bar is
    drawn only when stdout is a terminal, unless `force` is true; then, on a
    stream that is not a terminal, each update is a line of its own.

    Args:
        count_mode: "steps" or "samples" (Keras 2); None counts steps.
        stateful_metrics: names not to average over the epoch. Only used for
            batch logs in the Keras 2.3 convention (per-batch values with ``size``);
            Keras 3 and tf_keras send running means, which are shown as they are.
        force: draw the live bar even when stdout is not a terminal.
        interval_s: the least time between two redraws of the live bar.
        clock: the time source (seconds), for tests.

    Raises:
        ValueError: `count_mode` is neither "steps" nor "samples".
    """

    decides_on_batch = False  # it only observes
    observes_only = True  # runs after the workers are released (DESIGN principle 3)

    def __init__(
        self,
        count_mode: str | None = None,
        stateful_metrics: Iterable[str] | None = None,
        *,
        force: bool = False,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        if count_mode not in (None, "samples", "steps"):
            raise ValueError(
                f"Unknown `count_mode`: {count_mode!r}. Expected values are "
                '["samples", "steps"] (or no argument, as in Keras 3).'
            )
        if isinstance(stateful_metrics, str):
            raise TypeError(
                "stateful_metrics must be a collection of metric names, received the string "
                f"{stateful_metrics!r}; pass [{stateful_metrics!r}]."
            )
        self.count_mode = count_mode or "steps"
        self.stateful_metrics = set(stateful_metrics or ())
        self.force = bool(force)
        self.interval_s = float(interval_s)
        self._clock = clock
        self.verbose: int = 1
        self.epochs = 1
        self.target: int | None = None
        self.unit = "step"
        self.seen = 0
        self._num_workers = 1
        self._steps: int | None = None
        self._batch_size: int | None = None
        self._dynamic = False
        self._enabled = False
        self._epoch_start = 0.0
        self._last_draw = -float("inf")
        self._first_update: tuple[float, int] | None = None
        self._values: dict[str, Any] = {}
        self._sums: dict[str, float] = {}
        self._sizes = 0.0
        self._prev_width = 0
        self._reset_epoch()

    def on_train_begin(self, logs: Logs | None = None) -> None:
        params = self.params
        verbose = params.get("verbose", 1)
        self.verbose = 1 if verbose in ("auto", None) else int(verbose)
        self.epochs = int(params.get("epochs") or 1)
        self._num_workers = int(params.get("num_workers") or 1)
        steps = params.get("steps")
        self._steps = int(steps) if steps else None
        batch_size = params.get("batch_size")
        self._batch_size = int(batch_size) if batch_size else None
        samples = params.get("samples")
        if self.count_mode == "samples" and samples:
            self.unit, self.target = "sample", int(samples)
        else:
            self.unit = "step"
            self.target = self._steps * self._num_workers if self._steps else None
        stdout = sys.stdout
        self._dynamic = bool(getattr(stdout, "isatty", lambda: False)())
        self._enabled = self.verbose == 2 or (self.verbose == 1 and (self._dynamic or self.force))

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._reset_epoch()
        if self._enabled and self.epochs > 1:
            self._write(f"Epoch {epoch + 1}/{self.epochs}\n")

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if not self._enabled:
            return
        logs = logs or {}
        now = self._clock()
        self.seen = self._seen_after(batch)
        self._accumulate(logs)
        if self._first_update is None:
            self._first_update = (now, self.seen)
        if self.verbose != 1 or now - self._last_draw < self.interval_s:
            return
        self._last_draw = now
        self._draw(self._line(now, final=False), final=False)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if self.target is None:
            self.target = self.seen or None
        self._values = {k: v for k, v in (logs or {}).items() if k not in _NOT_METRICS}
        self._draw(self._line(now, final=True), final=True)

    def _reset_epoch(self) -> None:
        self.seen = 0
        self._epoch_start = self._clock()
        self._last_draw = -float("inf")
        self._first_update = None
        self._values = {}
        self._sums = {}
        self._sizes = 0.0
        self._prev_width = 0

    def _seen_after(self, batch: int) -> int:
        steps_done = batch + 1
        if self.unit == "step":
            return steps_done * self._num_workers
        assert self.target is not None
        if self._batch_size:
            return min(self.target, steps_done * self._batch_size * self._num_workers)
        if self._steps:
            return min(self.target, round(self.target * steps_done / self._steps))
        return steps_done

    def _accumulate(self, logs: Logs) -> None:
        if "size" not in logs:  # running means (Keras 3, tf_keras): show as they are
            self._values = {k: v for k, v in logs.items() if k not in _NOT_METRICS}
            return
        size = float(logs.get("size") or 0)  # Keras 2.3: per-batch values, averaged here
        self._sizes += size
        for key, value in logs.items():
            if key in _NOT_METRICS:
                continue
            if key in self.stateful_metrics or not isinstance(value, int | float):
                self._values[key] = value
                continue
            self._sums[key] = self._sums.get(key, 0.0) + float(value) * size
            self._values[key] = self._sums[key] / self._sizes if self._sizes else value

    def _per_unit(self, now: float) -> float:
        first = self._first_update
        if first is not None and self.seen > first[1]:
            return (now - first[0]) / (self.seen - first[1])
        return (now - self._epoch_start) / self.seen if self.seen else 0.0

    def _line(self, now: float, *, final: bool) -> str:
        target = self.target
        current = target if final and target else self.seen
        elapsed = now - self._epoch_start
        parts: list[str] = []  # joined with " - ", as Keras does
        if target:
            count = f"{current:>{len(str(target))}}/{target}"
            if self.verbose == 1:
                filled = int(_BAR_WIDTH * min(current, target) / target)
                body = "=" * filled
                if filled < _BAR_WIDTH:
                    body += (">" if current else ".") + "." * (_BAR_WIDTH - filled - 1)
                count += f" [{body}]"
            parts.append(count)
        elif current:  # no step count known: "n/Unknown", as Keras
            parts.append(f"{current:>7}/Unknown")
        per_unit, rate = 0.0, ""
        if current:
            per_unit = self._per_unit(now) if not final else elapsed / current
            rate = _format_rate(per_unit, self.unit)
        if self.verbose == 2:
            parts += [f"{elapsed:.0f}s", rate] if current else [f"{elapsed:.0f}s"]
        elif final or not target:
            parts.append(f"{elapsed:.0f}s {rate}" if current else f"{elapsed:.0f}s")
        else:
            parts.append(f"ETA: {_format_eta(per_unit * (target - current))}")
        parts += [f"{k}: {_format_value(v)}" for k, v in self._values.items()]
        return " - ".join(parts)

    def _draw(self, line: str, *, final: bool) -> None:
        if not self._dynamic:
            if final or self.verbose == 1:
                self._write(line + "\n")
            return
        pad = " " * max(0, self._prev_width - len(line))
        self._prev_width = len(line)
        self._write("\r" + line + pad + ("\n" if final else ""))

    def _write(self, text: str) -> None:
        stream = sys.stdout
        stream.write(text)
        stream.flush()
