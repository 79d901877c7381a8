"""Exact resume, the coordinator's side: journal entries taken and applied, backups tracked.

`capture` turns the engine's state after an epoch barrier into a `JournalEntry`;
`apply` sets a fresh attempt's state back to one (callbacks' `set_state`, the
decision log, the snapshot ids); `BackupTracker` knows which epochs every worker
has backed up and which entries are written, and says when an epoch can be
committed. `restartable` says which failures a restart can cure.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from distcb.coordinator.journal import JournalEntry
from distcb.coordinator.model_proxy import DecisionRecord, DecisionRecorder
from distcb.protocol.decisions import AnyDecision, Decision
from distcb.protocol.errors import WorkerLostError


def restartable(error: BaseException) -> bool:
    """A worker that went away (killed, evicted, silent, preempted): a restart from the
    backups cures it. A worker whose code raised, a raising callback, a protocol or
    aggregation error would fail again."""
    return isinstance(error, WorkerLostError) and error.retryable


def callback_states(callbacks: Sequence[Any]) -> list[dict[str, Any] | None]:
    """Each callback's `get_state()` (None for one that keeps none). Call on the callback
    thread; sinks that write on their own thread are synced first (`sync()`), so that
    what the state counts is on disk."""
    states: list[dict[str, Any] | None] = []
    for callback in callbacks:
        sync = getattr(callback, "sync", None)
        if callable(sync):
            sync()
        get_state = getattr(callback, "get_state", None)
        states.append(get_state() if callable(get_state) else None)
    return states


def restore_callbacks(callbacks: Sequence[Any], states: Sequence[dict[str, Any] | None]) -> None:
    """`set_state` on every callback that has a state (call after `attach`)."""
    for callback, state in zip(callbacks, states, strict=True):
        set_state = getattr(callback, "set_state", None)
        if state is not None and callable(set_state):
            set_state(state)


def records_json(records: Sequence[DecisionRecord]) -> list[dict[str, Any]]:
    return [
        {"decision": msgspec.to_builtins(r.decision), "made_by": r.made_by, "time": r.time}
        for r in records
    ]


def records_from_json(data: Sequence[dict[str, Any]]) -> list[DecisionRecord]:
    return [
        DecisionRecord(
            msgspec.convert(item["decision"], AnyDecision),
            str(item["made_by"]),
            float(item["time"]),
        )
        for item in data
    ]


def capture(
    *,
    epoch: int,
    states: list[dict[str, Any] | None],
    log: Sequence[DecisionRecord],
    recorder: DecisionRecorder,
    learning_rate: float | None,
    pending: Sequence[Decision],
    global_step: int,
    stopping: bool,
) -> JournalEntry:
    """The journal entry of the barrier of `epoch`."""
    return JournalEntry(
        epoch=epoch,
        callbacks=states,
        decisions=records_json(log),
        learning_rate=learning_rate,
        snapshots=sorted(recorder.outstanding),
        snapshot_counter=recorder.snapshot_counter,
        pending=list(pending),
        global_step=global_step,
        stopping=stopping,
    )


def apply_to_recorder(entry: JournalEntry, recorder: DecisionRecorder) -> None:
    recorder.snapshot_counter = entry.snapshot_counter
    recorder.outstanding = set(entry.snapshots)


@dataclass
class BackupTracker:
    """Which ranks backed up which epoch, and which entries are on disk."""

    reported: dict[int, dict[int, str | None]] = field(default_factory=dict)  # epoch -> rank
    written: set[int] = field(default_factory=set)
    committed: list[int] = field(default_factory=list)
    started_s: dict[int, float] = field(default_factory=dict)

    def expect(self, epoch: int) -> None:
        self.started_s[epoch] = time.monotonic()

    def report(self, epoch: int, rank: int, error: str | None) -> None:
        self.reported.setdefault(epoch, {})[rank] = error

    def complete(self, epoch: int, ranks: set[int]) -> bool:
        """Every rank in `ranks` backed up `epoch` without an error, and its entry is written."""
        got = self.reported.get(epoch, {})
        return (
            epoch in self.written
            and epoch not in self.committed
            and all(r in got and got[r] is None for r in ranks)
        )

    def commit(self, epoch: int) -> None:
        self.committed.append(epoch)
        self.reported = {e: v for e, v in self.reported.items() if e > epoch}
        self.written = {e for e in self.written if e >= epoch}
