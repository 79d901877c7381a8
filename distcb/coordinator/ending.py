"""The machine's ending role: the train end, the workers' goodbyes, lost ranks, deadlines.

An attempt ends in one of three ways, and always through `_end_training`
(`on_train_end` once, its decisions broadcast, the callbacks closed):

* every live rank's fit ended (`TrainEnd`) after the last barrier;
* a failure (`FailurePolicy`): the survivors stopped at a common point and
  reached their train end, or `Config.stop_timeout_s` ran out (`StopDeadline`);
* no live rank is left.

Then the attempt finishes once every live rank said it is done (`Done`, its
report), or `Config.reply_timeout_s` after the reply (`GoodbyeDeadline`).
"""

from __future__ import annotations

import logging
from typing import Any

from distcb.coordinator.attempt import Phase
from distcb.coordinator.barrier import BarrierRole
from distcb.coordinator.commands import Broadcast, CloseCallbacks, Drop, StartTimer, Steps
from distcb.coordinator.events import GoodbyeDeadline, StopDeadline, WorkerLost
from distcb.coordinator.failure_policy import FailJob, describe
from distcb.coordinator.model_proxy import DecisionRecord
from distcb.protocol.errors import WorkerLostError
from distcb.protocol.messages import Done, Preempted, TrainEnd, TrainEndReply, WorkerFailed

logger = logging.getLogger("distcb.coordinator")


def said_goodbye(worker: Any) -> bool:
    # The machine took in its Done (its report), not just the roster: the roster marks a
    # rank done as the message arrives, ahead of the machine's queue.
    return worker.report is not None


class EndingRole(BarrierRole):
    """The train end, goodbyes, lost ranks and the deadlines after a failure."""

    def _on_train_end(self, rank: int, message: TrainEnd) -> Steps:
        a = self.attempt
        if a.phase is Phase.TRAINING and a.outcome is None and a.roster.training():
            # This worker's fit ended on its own (its data ran out, a local callback
            # stopped it): the others go on without it; it waits for the train end.
            logger.warning("rank %d ended fit at epoch %d before the others", rank, a.epoch)
            a.merger.drop_rank(rank)
            yield from self._recheck_barriers()
            return
        if a.phase is Phase.TRAINING:
            a.phase = Phase.ENDING
        yield from self._maybe_end_training()

    def _maybe_end_training(self) -> Steps:
        a = self.attempt
        if a.phase is not Phase.ENDING or a.finished:
            return
        if not a.roster.all_live(lambda w: w.train_ended):
            return
        yield from self._end_training()

    def _end_training(self) -> Steps:
        a = self.attempt
        a.phase = Phase.DONE
        logs = dict(self.last_epoch_logs)
        interrupted = a.restarting is not None
        recorder, callbacks, epoch = a.recorder, self.callbacks, a.epoch

        def end() -> tuple[list[DecisionRecord], list[BaseException]]:
            recorder.set_context("train_end", epoch)
            if interrupted:  # the sinks close their files; nothing else ends: it goes on
                return [], callbacks.on_train_end_each(logs, observers_only=True)
            errors = callbacks.on_train_end_each(logs)
            return recorder.take(), errors

        records, errors = yield from self._hooks(end)
        decisions = [] if interrupted else self._log(records)
        for error in errors:
            if a.outcome is None:
                a.outcome = FailJob(error, describe(error), callbacks_broken=True)
            else:
                logger.error("on_train_end raised after the job had failed: %r", error)
        failure = a.failure
        error_text = describe(failure) if failure is not None else None
        a.roster.train_end_replied()
        yield Broadcast(TrainEndReply(tuple(decisions), error=error_text))  # type: ignore[arg-type]
        yield CloseCallbacks()
        if not a.roster.live or a.roster.all_live(said_goodbye):
            yield from self._finish()
        else:
            yield StartTimer(self.config.reply_timeout_s, GoodbyeDeadline(a.number))

    def _goodbye_late(self, event: GoodbyeDeadline) -> Steps:
        """Ranks still connected that did not say they were done within the reply timeout:
        the attempt ends without their reports; say which."""
        a = self.attempt
        if event.attempt != a.number or a.finished:
            return
        silent = sorted(r for r in a.roster.live if not said_goodbye(a.roster.workers[r]))
        if silent:
            logger.warning(
                "ranks %s did not say they were done within Config.reply_timeout_s=%g s after "
                "the train end: the result has no report from them",
                silent,
                self.config.reply_timeout_s,
            )
        yield from self._finish()

    def _on_done(self, rank: int, message: Done) -> Steps:
        a = self.attempt
        a.roster.workers[rank].report = message.report
        if a.phase is Phase.DONE and a.roster.all_live(said_goodbye):
            yield from self._finish()

    def _on_worker_failed(self, rank: int, message: WorkerFailed) -> Steps:
        # Its own code raised: a restart would raise again.
        error = WorkerLostError(rank, f"raised {message.error}", message.traceback, retryable=False)
        yield from self._on_lost(WorkerLost(rank, error))

    def _on_preempted(self, rank: int, message: Preempted) -> Steps:
        reason = "was preempted (SIGTERM): its pod or node is going away"
        yield from self._fail(WorkerLostError(rank, reason, retryable=True))

    def _on_lost(self, event: WorkerLost) -> Steps:
        a = self.attempt
        rank, error = event.rank, event.error
        if not a.concerns(event.attempt) or rank not in a.roster.live:
            return  # a report about an ended attempt, or a rank already counted as lost
        a.roster.mark_lost(rank, error.reason)
        yield Drop(rank, error.reason)
        a.merger.drop_rank(rank)
        if a.phase is Phase.DONE:
            said_done = a.roster.workers[rank].done  # (a send after its goodbye failed)
            if not said_done and a.outcome is None:
                # Training ended and every decision went out, but this rank never said it
                # was done: whether it applied the train-end decisions (restored weights)
                # and ran what follows `fit` (the chief saving the model) is unknown. A
                # failure of that rank, as anywhere else: restarted per the policy (the
                # final barrier's entry says only the train end is left), else the job
                # fails naming it.
                yield from self._fail(
                    WorkerLostError(
                        rank,
                        f"{error.reason}, after the train end but before it said it was done "
                        "(its train-end decisions and its report may be missing)",
                        error.traceback_text,
                        retryable=error.retryable,
                    )
                )
            if a.roster.all_live(said_goodbye):
                yield from self._finish()
            return
        yield from self._fail(error)

    def _give_up_on_survivors(self, event: StopDeadline) -> Steps:
        a = self.attempt
        if event.attempt != a.number or a.finished:
            return
        stuck = sorted(a.roster.training())
        if stuck:
            logger.warning(
                "ranks %s did not reach on_train_end within Config.stop_timeout_s=%g s after "
                "the failure",
                stuck,
                self.config.stop_timeout_s,
            )
        if a.phase is not Phase.DONE:
            yield from self._end_training()
        yield from self._finish()

    def _settle(self) -> Steps:
        a = self.attempt
        if a.phase is Phase.DONE or a.finished:
            return
        if not a.roster.live:
            yield from self._end_training()
            yield from self._finish()
            return
        yield from self._recheck_barriers()
        yield from self._maybe_end_training()
