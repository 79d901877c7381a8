"""The machine's training role: batch steps merged, the epoch-end barrier, the journal.

One epoch barrier, in order (`_finish_epoch`): merge the workers' epoch logs,
run the deciding callbacks (`on_epoch_end`, then the next `on_epoch_begin`) in
one trip to the callback thread, release every worker with the decisions,
tell the listeners, run the observers (sinks, History), and journal. The
barrier commits once every rank has backed it up (`_on_backed_up`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from distcb.callbacks.callback_list import DeferredCall
from distcb.coordinator import resume as resuming
from distcb.coordinator.aggregate import merge_logs
from distcb.coordinator.attempt import Phase
from distcb.coordinator.batch_merge import BatchMerger, MergedStep
from distcb.coordinator.commands import (
    Broadcast,
    CommitJournal,
    EpochReleased,
    Steps,
    WriteJournal,
)
from distcb.coordinator.core import MachineCore
from distcb.coordinator.failure_policy import CallbackFailed
from distcb.coordinator.model_proxy import DecisionRecord
from distcb.protocol.decisions import BackupModel, Decision, EffectPoint
from distcb.protocol.logs import Logs
from distcb.protocol.messages import BackedUp, EpochEnd, EpochReply, Progress

logger = logging.getLogger("distcb.coordinator")


class BarrierRole(MachineCore):
    """Batch steps and epoch barriers of the attempt in training."""

    def _process_steps(self, steps: Sequence[MergedStep]) -> Steps:
        a = self.attempt
        if not steps or a.phase is not Phase.TRAINING:
            return
        a.last_progress = time.monotonic()
        epoch = a.epoch
        self.last_batch_logs = dict(steps[-1].logs)
        decisions: list[Decision] = []
        if self.callbacks.has_batch_hooks and a.hooks_run:
            recorder, state, callbacks = a.recorder, self.state, self.callbacks

            def run_all() -> list[DecisionRecord]:
                # One trip to the callback thread for all ready steps, but each step is
                # its own hook chain so that each decision gets its own effect step.
                made: list[DecisionRecord] = []
                for merged in steps:
                    state.global_step += 1
                    state.set_batch_step(merged)
                    recorder.set_context("batch", epoch, merged.step)
                    callbacks.on_train_batch_begin(merged.step)
                    callbacks.on_train_batch_end(merged.step, dict(merged.logs))
                    made += recorder.take()
                return made

            try:
                decisions = self._log((yield from self._hooks(run_all)))
            except CallbackFailed as exc:
                yield from self._fail(exc)  # survivors still hear the progress below
        else:
            self.state.global_step += len(steps)
            self.state.set_batch_step(steps[-1])
        last = steps[-1].step
        window = a.roster.flow_window
        # Workers need the processed step only to stay within the window; they send a
        # frame every W/4 steps, and hearing back every W/2 keeps them off the edge.
        if decisions or (window is not None and last - a.progress_sent >= max(1, window // 2)):
            a.progress_sent = last
            yield Broadcast(Progress(epoch, last, tuple(decisions)))  # type: ignore[arg-type]

    def _on_epoch_end(self, rank: int, message: EpochEnd) -> Steps:
        self.attempt.epoch_ends[rank] = message
        yield from self._maybe_finish_epoch()

    def _recheck_barriers(self) -> Steps:
        """A rank left the batch merge and the epoch barrier: they may be complete now."""
        a = self.attempt
        yield from self._process_steps(a.merger.pop_ready(a.roster.training()))
        yield from self._maybe_finish_epoch()

    def _maybe_finish_epoch(self) -> Steps:
        a = self.attempt
        training = a.roster.training()
        if a.phase is not Phase.TRAINING or not training:
            return
        if all(r in a.epoch_ends for r in training):
            yield from self._finish_epoch(training)

    def _finish_epoch(self, training: set[int]) -> Steps:
        a = self.attempt
        epoch = a.epoch
        a.last_progress = time.monotonic()
        yield from self._process_steps(a.merger.flush(training))
        if not a.hooks_run:
            yield from self._release_stopping(epoch)
            return
        logs = self._merge_epoch({r: a.epoch_ends[r] for r in training})
        a.epoch_ends = {}
        planned_last = epoch + 1 >= int(self.params.get("epochs") or 1)
        deferred: list[DeferredCall] = []
        recorder, callbacks, model = a.recorder, self.callbacks, a.model

        def decide() -> tuple[list[DecisionRecord], bool]:
            recorder.set_context("epoch_end", epoch)
            callbacks.on_epoch_end_deferring(epoch, logs, deferred)
            if self.stop_requested is not None and not model.stop_training:
                model.stop_training = True  # recorded as distcb's decision
            made = recorder.take()
            stopping = model.stop_training or planned_last or a.failure is not None
            if not stopping:
                recorder.set_context("epoch_begin", epoch + 1)
                callbacks.on_epoch_begin_deferring(epoch + 1, deferred)
                made += recorder.take()
            return made, stopping

        try:
            records, stopping = yield from self._hooks(decide)
        except CallbackFailed as exc:
            yield from self._fail(exc)
            yield from self._release_stopping(epoch)  # the failure's stop, released at once
            return
        backup = self._backup_decision(epoch, stopping)
        if backup is not None:
            records.append(DecisionRecord(backup, "distcb", time.time()))
        decisions = self._log(records)
        self.last_epoch_logs = logs
        if stopping:
            a.phase = Phase.ENDING
        else:
            a.epoch = epoch + 1
            a.merger = BatchMerger(a.epoch, stateful_metrics=self.stateful_metrics)
            a.progress_sent = -1
        a.roster.begin_epoch(a.epoch)  # before the reply: a worker answers at once
        yield Broadcast(EpochReply(epoch, tuple(decisions)))  # type: ignore[arg-type]
        if a.failure is None:  # merged from every worker: a result to tell
            yield EpochReleased(epoch, logs, records)
        yield from self._observe(epoch, deferred)
        if backup is not None and a.hooks_run:
            pending = [d for d in decisions if d.at > EffectPoint.epoch_end(epoch)]
            yield from self._journal_barrier(epoch, pending, stopping)

    def _release_stopping(self, epoch: int) -> Steps:
        """The failure's stop takes effect at this barrier; nothing of this epoch is
        recorded (a callback raised, or the attempt ends in a restart)."""
        a = self.attempt
        a.epoch_ends = {}
        a.phase = Phase.ENDING
        a.roster.begin_epoch(epoch)  # before the reply: a worker answers at once
        yield Broadcast(EpochReply(epoch, ()))

    def _backup_decision(self, epoch: int, stopping: bool) -> BackupModel | None:
        if self.recovery is None or self.attempt.failure is not None:
            return None
        return self.recovery.backup_decision(epoch, stopping, self.attempt.recorder.outstanding)

    def _journal_barrier(self, epoch: int, pending: list[Decision], stopping: bool) -> Steps:
        """Write epoch `epoch`'s journal entry (off the event loop), then commit it once
        every worker has backed it up."""
        assert self.recovery is not None
        a = self.attempt
        callbacks = self.callbacks.callbacks
        try:
            states = yield from self._hooks(lambda: resuming.callback_states(callbacks))
        except CallbackFailed as exc:
            yield from self._fail(exc)
            return
        entry = resuming.capture(
            epoch=epoch,
            states=states,
            log=list(self.decision_log),
            recorder=a.recorder,
            learning_rate=float(a.model.optimizer.learning_rate),
            pending=pending,
            global_step=self.state.global_step,
            stopping=stopping,
        )
        if (yield from self._ask(WriteJournal(entry))):
            yield from self._maybe_commit(epoch)

    def _maybe_commit(self, epoch: int) -> Steps:
        # A barrier commits once every rank of the job has its backup on disk, lost ranks
        # included: a restart restores every rank, so a backup a rank never finished
        # leaves nothing to restore it from (it must not count as done by omission).
        assert self.recovery is not None
        if self.recovery.commit_due(epoch, set(range(self.world_size))):
            yield from self._ask(CommitJournal(epoch))

    def _on_backed_up(self, rank: int, message: BackedUp) -> Steps:
        if self.recovery is not None:
            self.recovery.backed_up(message.epoch, rank, message.error)
            yield from self._maybe_commit(message.epoch)

    def _merge_epoch(self, ends: dict[int, EpochEnd]) -> Logs:
        merged = merge_logs(
            {r: e.logs for r, e in ends.items()},
            {r: e.samples for r, e in ends.items()},
            val_samples={r: e.val_samples for r, e in ends.items()},
            stateful_metrics=self.stateful_metrics,
        )
        self.state.epoch = self.attempt.epoch
        self.state.epoch_spread = merged.spread
        self.state.epoch_extras = {r: e.extras for r, e in ends.items()}
        return dict(merged.logs)

    def _observe(self, epoch: int, deferred: list[DeferredCall]) -> Steps:
        """Observers' epoch hooks, after the workers were released (DESIGN principle 3)."""
        if not deferred:
            return
        recorder, callbacks = self.attempt.recorder, self.callbacks

        def run_deferred() -> list[DecisionRecord]:
            recorder.set_context("epoch_end", epoch)
            for call in deferred:
                callbacks.current = call.callback
                call()
            callbacks.current = None
            return recorder.take()

        try:
            late = yield from self._hooks(run_deferred)
        except CallbackFailed as exc:
            yield from self._fail(exc)
            return
        if late:
            logger.warning(
                "an observes_only callback made decisions %s; they go out with the next "
                "message and take effect at the workers' next effect point",
                [r.decision for r in late],
            )
            recorder.requeue(late)
