"""The coordinator's picture of a job, for ``/status`` and status pages."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from distcb.callbacks.extension import HasStatistics

if TYPE_CHECKING:
    from distcb.coordinator.engine import Coordinator

RECENT = 200  # decisions and saves kept for status pages


def job_status(coordinator: Coordinator) -> dict[str, Any]:
    """JSON values (floats may be non-finite: the server makes them strict JSON)."""
    roster = coordinator.roster
    workers = roster.status()
    live = [w for w in workers if w["state"] != "lost"]
    front = max(((w["epoch"], w["step"]) for w in live), default=(0, -1))
    for worker in workers:
        worker["lag_steps"] = front[1] - worker["step"] if worker["epoch"] == front[0] else None
        worker["lag_epochs"] = front[0] - worker["epoch"]
    statistics: dict[str, Any] = {}
    for callback in coordinator.callbacks.callbacks:
        if isinstance(callback, HasStatistics):
            with contextlib.suppress(Exception):
                value = callback.statistics()
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    value = dataclasses.asdict(value)  # JSON for /status
                name, count = type(callback).__name__, 1
                while (key := name if count == 1 else f"{name}#{count}") in statistics:
                    count += 1  # two sinks of one class keep both
                statistics[key] = value
    history = coordinator.history
    state = coordinator.state
    failure = coordinator.failure
    return {
        "phase": coordinator.phase.value,
        "world_size": coordinator.world_size,
        "attempt": coordinator.attempt,
        "failures": [describe(f) for f in coordinator.failures],
        "epoch": coordinator.epoch,
        "epochs": coordinator.params.get("epochs"),
        # Epochs whose barrier has passed (0-based epoch + 1): "finished 400/400", not 399.
        "epochs_done": history.epoch[-1] + 1 if history.epoch else 0,
        # Without a batch hook on the coordinator, workers stream no batch logs: the step
        # fields then stay at their start values and mean nothing.
        "batches_streamed": bool(coordinator.callbacks.has_batch_hooks),
        "processed_step": coordinator.processed_step,
        "global_step": state.global_step,
        "workers": workers,
        "joined": sorted(roster.workers),
        "live": sorted(roster.live),
        "history": {k: list(v[-500:]) for k, v in history.history.items()},
        "history_epochs": list(history.epoch[-500:]),
        "last_epoch_logs": dict(coordinator.last_epoch_logs),
        "last_batch_logs": dict(coordinator.last_batch_logs),
        "epoch_spread": {k: s.to_dict() for k, s in state.epoch_spread.items()},
        "batch_spread": {k: s.to_dict() for k, s in state.batch_spread.items()},
        "monitored": sorted(
            {str(cb.monitor) for cb in coordinator.callbacks.callbacks if hasattr(cb, "monitor")}
        ),
        "decisions": [r.to_json() for r in coordinator.decision_log[-RECENT:]],
        "decision_count": len(coordinator.decision_log),
        "saved_count": coordinator.saved_count,
        "committed_epoch": coordinator.committed_epoch,
        "sinks": statistics,
        "failure": describe(failure) if failure is not None else None,
    }


CALLBACK_NOTE = "raised by the coordinator callback"
"""The note added to an exception a coordinator callback raised (before its name)."""


def describe(error: BaseException) -> str:
    """What ended the job, for people: one line where possible (a worker's traceback is
    left out: that worker printed it), naming the coordinator callback that raised."""
    from distcb.protocol.errors import DistcbError, WorkerLostError

    if isinstance(error, WorkerLostError):
        return error.summary
    if isinstance(error, DistcbError):
        return str(error)
    text = f"{type(error).__name__}: {error}"
    notes = [n for n in getattr(error, "__notes__", ()) if str(n).startswith(CALLBACK_NOTE)]
    if notes:  # as CallbackFailed says it, so that every message reads alike
        return f"coordinator callback {notes[-1][len(CALLBACK_NOTE) :].strip()} raised {text}"
    return text
