"""The coordinator's picture of a job, for ``/status`` and status pages.

The machine takes a `JobSnapshot` (`CoordinatorMachine.snapshot`); `job_status`
formats it as JSON values. Nothing here reads the coordinator itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distcb.callbacks.extension import HasStatistics
from distcb.coordinator.aggregate import Spread
from distcb.coordinator.failure_policy import CALLBACK_NOTE, describe

RECENT = 200  # decisions and saves kept for status pages

__all__ = ["CALLBACK_NOTE", "RECENT", "JobSnapshot", "describe", "job_status", "sink_statistics"]


@dataclass(frozen=True)
class JobSnapshot:
    """The job as it stands: what ``/status`` shows (see `job_status` for the meanings)."""

    phase: str
    world_size: int
    attempt: int
    failures: tuple[str, ...]
    epoch: int
    epochs: int | None
    history: Mapping[str, Sequence[Any]]
    history_epochs: Sequence[int]
    batches_streamed: bool
    processed_step: int
    global_step: int
    workers: tuple[dict[str, Any], ...]
    joined: tuple[int, ...]
    live: tuple[int, ...]
    last_epoch_logs: dict[str, Any]
    last_batch_logs: dict[str, Any]
    epoch_spread: dict[str, Spread]
    batch_spread: dict[str, Spread]
    monitored: tuple[str, ...]
    decisions: tuple[dict[str, Any], ...]
    decision_count: int
    saved_count: int
    committed_epoch: int | None
    sinks: dict[str, Any]
    failure: str | None


def sink_statistics(callbacks: Sequence[Any]) -> dict[str, Any]:
    """Each callback's `statistics()` (sinks), keyed by class name (two of one class: both)."""
    statistics: dict[str, Any] = {}
    for callback in callbacks:
        if isinstance(callback, HasStatistics):
            with contextlib.suppress(Exception):
                value = callback.statistics()
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    value = dataclasses.asdict(value)  # JSON for /status
                name, count = type(callback).__name__, 1
                while (key := name if count == 1 else f"{name}#{count}") in statistics:
                    count += 1  # two sinks of one class keep both
                statistics[key] = value
    return statistics


def job_status(snapshot: JobSnapshot) -> dict[str, Any]:
    """JSON values (floats may be non-finite: the server makes them strict JSON)."""
    workers = [dict(w) for w in snapshot.workers]
    live = [w for w in workers if w["state"] != "lost"]
    front = max(((w["epoch"], w["step"]) for w in live), default=(0, -1))
    for worker in workers:
        worker["lag_steps"] = front[1] - worker["step"] if worker["epoch"] == front[0] else None
        worker["lag_epochs"] = front[0] - worker["epoch"]
    history_epochs = snapshot.history_epochs
    return {
        "phase": snapshot.phase,
        "world_size": snapshot.world_size,
        "attempt": snapshot.attempt,
        "failures": list(snapshot.failures),
        "epoch": snapshot.epoch,
        "epochs": snapshot.epochs,
        # Epochs whose barrier has passed (0-based epoch + 1): "finished 400/400", not 399.
        "epochs_done": history_epochs[-1] + 1 if history_epochs else 0,
        # Without a batch hook on the coordinator, workers stream no batch logs: the step
        # fields then stay at their start values and mean nothing.
        "batches_streamed": snapshot.batches_streamed,
        "processed_step": snapshot.processed_step,
        "global_step": snapshot.global_step,
        "workers": workers,
        "joined": list(snapshot.joined),
        "live": list(snapshot.live),
        "history": {k: list(v[-500:]) for k, v in snapshot.history.items()},
        "history_epochs": list(history_epochs[-500:]),
        "last_epoch_logs": dict(snapshot.last_epoch_logs),
        "last_batch_logs": dict(snapshot.last_batch_logs),
        "epoch_spread": {k: s.to_dict() for k, s in snapshot.epoch_spread.items()},
        "batch_spread": {k: s.to_dict() for k, s in snapshot.batch_spread.items()},
        "monitored": list(snapshot.monitored),
        "decisions": list(snapshot.decisions),
        "decision_count": snapshot.decision_count,
        "saved_count": snapshot.saved_count,
        "committed_epoch": snapshot.committed_epoch,
        "sinks": snapshot.sinks,
        "failure": snapshot.failure,
    }
