"""The coordinator machine driven cell by cell, with no event loop and no connection.

Each test feeds events (what the roster posts, what a launcher reports, the
deadlines the machine set) and reads the commands it yields; a small driver
here carries them out inline: hooks run on this thread, journal writes go to
disk at once, sends are recorded. This is the table of the coordinator's
behaviour the async engine (`distcb.coordinator.engine`) drives in production.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from distcb.callbacks import Callback
from distcb.callbacks.callback_list import CallbackList
from distcb.callbacks.history import History
from distcb.coordinator import identity
from distcb.coordinator.attempt import Phase
from distcb.coordinator.commands import (
    Broadcast,
    CheckIdentity,
    CloseCallbacks,
    CommitJournal,
    Drop,
    EpochReleased,
    Finish,
    HooksRaised,
    RunHooks,
    StartTimer,
    WriteJournal,
)
from distcb.coordinator.events import (
    GoodbyeDeadline,
    Joined,
    JoinFailed,
    StopDeadline,
    WorkerLost,
)
from distcb.coordinator.failure_policy import (
    FailJob,
    FailurePolicy,
    RestartFromBarrier,
    Wait,
)
from distcb.coordinator.machine import CoordinatorMachine
from distcb.coordinator.resume import Recovery
from distcb.protocol.config import Config
from distcb.protocol.decisions import (
    BackupModel,
    EffectPoint,
    StopTraining,
    batch_effect_step,
    last_allowed_step,
)
from distcb.protocol.errors import (
    JoinTimeoutError,
    ProtocolError,
    RestartsExhausted,
    WorkerLostError,
)
from distcb.protocol.messages import (
    Abort,
    BackedUp,
    BatchFrame,
    Done,
    EpochEnd,
    EpochReply,
    Join,
    JoinParams,
    Message,
    Progress,
    Start,
    TrainEnd,
    TrainEndReply,
)
from distcb.transport.memory import connection_pair

CONFIG = Config(window_steps=4, max_ahead_steps=8)


class Recording(Callback):
    """Records the hooks the machine ran; stops at a batch, raises where told."""

    def __init__(self, stop_at_batch: int | None = None, raise_at_epoch_end: bool = False):
        super().__init__()
        self.calls: list[str] = []
        self.stop_at_batch = stop_at_batch
        self.raise_at_epoch_end = raise_at_epoch_end

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch}")
        if self.raise_at_epoch_end:
            raise ValueError("boom")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


class DecidesOnBatches(Recording):
    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(f"batch {batch}")
        if batch == self.stop_at_batch:
            self.model.stop_training = True


class Driver:
    """Carries out the machine's commands inline and keeps them."""

    def __init__(
        self,
        callbacks: Iterable[Any] = (),
        *,
        world_size: int = 2,
        epochs: int = 2,
        recovery: Recovery | None = None,
    ):
        history = History()
        self.posted: list[Any] = []
        self.machine = CoordinatorMachine(
            world_size=world_size,
            config=CONFIG,
            callbacks=CallbackList([*callbacks, history]),
            history=history,
            stateful_metrics=frozenset(),
            recovery=recovery,
            post=self.posted.append,
        )
        self.world_size = world_size
        self.epochs = epochs

    @property
    def roster(self):
        return self.machine.attempt.roster

    def join_all(self) -> list[Any]:
        for rank in range(self.world_size):
            join = Join(
                rank=rank, world_size=self.world_size, params=JoinParams(epochs=self.epochs)
            )
            self.roster.admit(join, connection_pair()[0])
        return self.feed(Joined())

    def feed(self, *events: Any) -> list[Any]:
        """Hand `events` to the machine; the commands it yielded, carried out."""
        steps = self.machine.handle(events)
        commands: list[Any] = []
        answer: Any = None
        while True:
            try:
                command = steps.send(answer)
            except StopIteration:
                return commands
            commands.append(command)
            answer = self.carry_out(command)

    def arrive(self, rank: int, message: Message) -> list[Any]:
        """`message` from `rank`, checked by the roster as its connection loop would."""
        return self.feed(self.roster.take_in(self.roster.workers[rank], message))

    def carry_out(self, command: Any) -> Any:
        recovery = self.machine.recovery
        if isinstance(command, RunHooks):
            try:
                return command.fn()
            except Exception as exc:
                return HooksRaised(exc)
        if isinstance(command, WriteJournal):
            assert recovery is not None
            return recovery.write_now(command.entry)
        if isinstance(command, CommitJournal):
            assert recovery is not None
            recovery.commit_now(command.epoch)
        if isinstance(command, CheckIdentity):
            assert recovery is not None
            identity.check_workers(recovery.journal, command.workers)
        return None

    def epoch_end(self, epoch: int, loss: float = 1.0) -> list[Any]:
        commands: list[Any] = []
        for rank in range(self.world_size):
            if rank in self.roster.live:
                commands += self.arrive(rank, EpochEnd(rank=rank, epoch=epoch, logs={"loss": loss}))
        return commands


def sent(commands: list[Any], kind: type[Message] | None = None) -> list[Message]:
    messages = [c.message for c in commands if isinstance(c, Broadcast)]
    return [m for m in messages if kind is None or isinstance(m, kind)]


def frame(rank: int, epoch: int, steps: list[int]) -> BatchFrame:
    return BatchFrame(rank=rank, epoch=epoch, steps=steps, logs={"loss": [1.0] * len(steps)})


@pytest.fixture
def recovery(tmp_path):
    def make(max_restarts: int = 1) -> Recovery:
        return Recovery(
            str(tmp_path),
            world_size=2,
            callbacks=[],
            max_restarts=max_restarts,
            resume=False,
            backup_every_epochs=1,
        )

    return make


def open_fresh(recovery: Recovery) -> Recovery:
    recovery.journal.start()
    return recovery


# ------------------------------------------------------------------ join


def test_join_runs_train_begin_once_then_sends_the_go_signal():
    callback = Recording()
    driver = Driver([callback])
    commands = driver.join_all()
    assert isinstance(commands[0], RunHooks)  # hooks first, the go signal after
    (start,) = sent(commands)
    assert isinstance(start, Start)
    assert start.ahead_steps is None
    assert not start.want_batch_logs
    assert callback.calls == ["train_begin"]
    assert driver.machine.attempt.phase is Phase.TRAINING


def test_a_join_that_failed_ends_the_attempt_at_once():
    driver = Driver([Recording()])
    commands = driver.feed(JoinFailed(JoinTimeoutError({1}, 1.0, 2)))
    assert isinstance(sent(commands)[0], Abort)
    assert isinstance(commands[-1], Finish)
    assert isinstance(driver.machine.attempt.failure, JoinTimeoutError)
    assert driver.machine.attempt.phase is Phase.DONE


def test_workers_that_disagree_on_epochs_fail_the_job():
    driver = Driver([Recording()])
    driver.roster.admit(
        Join(rank=0, world_size=2, params=JoinParams(epochs=2)), connection_pair()[0]
    )
    driver.roster.admit(
        Join(rank=1, world_size=2, params=JoinParams(epochs=3)), connection_pair()[0]
    )
    driver.feed(Joined())
    assert isinstance(driver.machine.attempt.failure, ProtocolError)


# ------------------------------------------------------------------ batches and the window


def test_a_batch_decision_takes_effect_beyond_what_any_worker_may_have_begun():
    driver = Driver([DecidesOnBatches(stop_at_batch=3)])
    (start,) = sent(driver.join_all())
    assert start.ahead_steps == CONFIG.window_steps  # a callback decides on batches
    assert driver.arrive(0, frame(0, 0, [0, 1, 2, 3])) == []  # rank 1 has not reported
    commands = driver.arrive(1, frame(1, 0, [0, 1, 2, 3]))
    (progress,) = sent(commands, Progress)
    assert progress.processed_step == 3
    (stop,) = progress.decisions
    assert isinstance(stop, StopTraining)
    assert stop.at == EffectPoint.batch(0, batch_effect_step(3, CONFIG.window_steps))


def test_the_roster_refuses_a_step_beyond_the_window():
    driver = Driver([DecidesOnBatches()])
    driver.join_all()
    beyond = last_allowed_step(driver.machine.attempt.merger.processed_step, 4) + 1
    with pytest.raises(ProtocolError, match="exceeded the window"):
        driver.roster.take_in(driver.roster.workers[0], frame(0, 0, [beyond]))


def test_frames_handed_over_together_merge_in_one_trip_to_the_callbacks():
    driver = Driver([DecidesOnBatches()])
    driver.join_all()
    roster = driver.roster
    events = [roster.take_in(roster.workers[r], frame(r, 0, [0, 1])) for r in (0, 1)]
    commands = driver.feed(*events)
    assert sum(isinstance(c, RunHooks) for c in commands) == 1
    assert driver.machine.attempt.merger.processed_step == 1


# ------------------------------------------------------------------ the epoch barrier


def test_the_barrier_waits_for_every_rank_then_decides_and_releases():
    callback = Recording()
    driver = Driver([callback], epochs=3)
    driver.join_all()
    assert driver.arrive(0, EpochEnd(rank=0, epoch=0, logs={"loss": 1.0})) == []
    commands = driver.arrive(1, EpochEnd(rank=1, epoch=0, logs={"loss": 3.0}))
    kinds = [type(c) for c in commands]
    # Decide (hooks), release, tell the listeners: in that order.
    assert kinds.index(RunHooks) < kinds.index(Broadcast) < kinds.index(EpochReleased)
    (reply,) = sent(commands, EpochReply)
    assert reply.epoch == 0
    released = next(c for c in commands if isinstance(c, EpochReleased))
    assert released.logs == {"loss": 2.0}
    assert driver.machine.attempt.epoch == 1
    assert "epoch_end 0" in callback.calls


# ------------------------------------------------------------------ backups and commits


def test_a_barrier_commits_once_every_rank_backed_it_up(recovery):
    journal = open_fresh(recovery())
    driver = Driver([Recording()], recovery=journal, epochs=3)
    commands = driver.join_all()
    assert any(isinstance(c, CheckIdentity) for c in commands)  # the first attempt's
    commands = driver.epoch_end(0)
    (reply,) = sent(commands, EpochReply)
    assert any(isinstance(d, BackupModel) and d.epoch == 0 for d in reply.decisions)
    assert any(isinstance(c, WriteJournal) for c in commands)
    assert driver.arrive(0, BackedUp(rank=0, epoch=0)) == []
    assert journal.committed_epoch is None
    assert driver.arrive(1, BackedUp(rank=1, epoch=0)) == [CommitJournal(0)]
    assert journal.committed_epoch == 0


def test_a_failed_backup_commits_nothing(recovery):
    journal = open_fresh(recovery())
    driver = Driver([Recording()], recovery=journal, epochs=3)
    driver.join_all()
    driver.epoch_end(0)
    driver.arrive(0, BackedUp(rank=0, epoch=0))
    assert driver.arrive(1, BackedUp(rank=1, epoch=0, error="OSError: disk full")) == []
    assert journal.committed_epoch is None


# ------------------------------------------------------------------ failures


def test_a_lost_rank_with_restarts_left_restarts_from_the_committed_barrier(recovery):
    journal = open_fresh(recovery(max_restarts=1))
    driver = Driver([Recording()], recovery=journal, epochs=3)
    driver.join_all()
    driver.epoch_end(0)
    driver.arrive(0, BackedUp(rank=0, epoch=0))
    driver.arrive(1, BackedUp(rank=1, epoch=0))
    commands = driver.feed(WorkerLost(1, WorkerLostError(1, "was killed")))
    assert commands[0] == Drop(1, "was killed")
    (abort,) = sent(commands, Abort)
    assert abort.restart
    assert any(isinstance(c, StartTimer) and isinstance(c.event, StopDeadline) for c in commands)
    restart = driver.machine.attempt.restarting
    assert isinstance(restart, RestartFromBarrier)
    assert restart.epoch == 0
    assert driver.machine.attempt.failure is None
    # The survivor reaches its train end: only observers end, the attempt is over.
    commands = driver.arrive(0, TrainEnd(rank=0))
    (reply,) = sent(commands, TrainEndReply)
    assert reply.decisions == ()
    assert reply.error is None


def test_restarts_exhausted_fail_the_job(recovery):
    journal = open_fresh(recovery(max_restarts=1))
    journal.failures.append(WorkerLostError(1, "was killed"))  # the one restart is spent
    driver = Driver([Recording()], recovery=journal)
    driver.join_all()
    commands = driver.feed(WorkerLost(1, WorkerLostError(1, "was killed again")))
    (abort,) = sent(commands, Abort)
    assert not abort.restart
    assert isinstance(driver.machine.attempt.failure, RestartsExhausted)
    # The failure's stop is recorded, at a common point.
    assert isinstance(driver.machine.decision_log[-1].decision, StopTraining)


def test_a_worker_whose_code_raised_is_not_restarted(recovery):
    journal = open_fresh(recovery(max_restarts=3))
    driver = Driver([Recording()], recovery=journal)
    driver.join_all()
    error = WorkerLostError(1, "raised ValueError", retryable=False)
    driver.feed(WorkerLost(1, error))
    assert driver.machine.attempt.failure is error


def test_a_raising_callback_fails_the_job_and_releases_the_barrier_without_hooks():
    callback = Recording(raise_at_epoch_end=True)
    driver = Driver([callback], epochs=3)
    driver.join_all()
    commands = driver.epoch_end(0)
    outcome = driver.machine.attempt.outcome
    assert isinstance(outcome, FailJob)
    assert outcome.callbacks_broken
    assert isinstance(outcome.error, ValueError)  # the job raises what the callback raised
    abort, reply = sent(commands)
    assert isinstance(abort, Abort)
    assert not abort.restart
    assert reply == EpochReply(0, ())  # released with the failure's stop only
    assert not any(isinstance(c, EpochReleased) for c in commands)  # no result to tell
    # The survivors reach their train end: on_train_end runs, the reply names the error.
    driver.arrive(0, TrainEnd(rank=0))
    commands = driver.arrive(1, TrainEnd(rank=1))
    (end,) = sent(commands, TrainEndReply)
    assert end.error is not None
    assert "Recording" in end.error
    assert "boom" in end.error
    assert callback.calls[-1] == "train_end"


def test_the_stop_deadline_ends_the_attempt_without_the_stuck_ranks():
    driver = Driver([Recording()], world_size=3)
    driver.join_all()
    commands = driver.feed(WorkerLost(2, WorkerLostError(2, "went silent")))
    (timer,) = [c for c in commands if isinstance(c, StartTimer)]
    commands = driver.feed(timer.event)
    assert any(isinstance(m, TrainEndReply) for m in sent(commands))
    assert isinstance(commands[-1], Finish)


def test_the_policy_decides_once_then_waits():
    policy = FailurePolicy(None)
    first = policy.decide(WorkerLostError(1, "gone"), None)
    assert isinstance(first, FailJob)
    assert isinstance(policy.decide(WorkerLostError(0, "gone too"), first), Wait)


# ------------------------------------------------------------------ the train end


def test_the_train_end_runs_on_train_end_once_and_finishes_on_every_goodbye():
    callback = Recording()
    driver = Driver([callback], epochs=1)
    driver.join_all()
    driver.epoch_end(0)  # the last epoch: the workers stop
    assert driver.machine.attempt.phase is Phase.ENDING
    assert driver.arrive(0, TrainEnd(rank=0)) == []
    commands = driver.arrive(1, TrainEnd(rank=1))
    assert [type(c) for c in commands] == [RunHooks, Broadcast, CloseCallbacks, StartTimer]
    assert isinstance(commands[-1].event, GoodbyeDeadline)
    assert callback.calls.count("train_end") == 1
    assert driver.arrive(0, Done(rank=0, report={"final_loss": 1.0})) == []
    assert driver.arrive(1, Done(rank=1, report={"final_loss": 1.0})) == [Finish()]
    history = driver.machine.result()
    assert history.epoch == [0]
    assert history.worker_reports == {0: {"final_loss": 1.0}, 1: {"final_loss": 1.0}}


def test_a_silent_rank_after_the_train_end_does_not_hold_the_job():
    driver = Driver([Recording()], epochs=1)
    driver.join_all()
    driver.epoch_end(0)
    driver.arrive(0, TrainEnd(rank=0))
    commands = driver.arrive(1, TrainEnd(rank=1))
    driver.arrive(0, Done(rank=0))
    assert driver.feed(commands[-1].event) == [Finish()]  # the goodbye deadline


# ------------------------------------------------------------------ attempts


def test_a_late_report_about_an_ended_attempt_is_dropped(recovery):
    journal = open_fresh(recovery(max_restarts=2))
    driver = Driver([Recording()], recovery=journal)
    driver.join_all()
    driver.feed(WorkerLost(1, WorkerLostError(1, "was killed"), attempt=0))
    assert driver.machine.attempt.restarting is not None
    driver.machine.next_attempt(None, driver.posted.append)
    assert driver.machine.attempt.number == 1
    driver.join_all()
    # The survivor of attempt 0 exits "retry me" as it was told; the launcher reports it
    # only now: no failure of attempt 1.
    late = WorkerLost(0, WorkerLostError(0, "exited with the retry code"), attempt=0)
    assert driver.feed(late) == []
    assert driver.machine.attempt.outcome is None
    assert driver.roster.live == {0, 1}
    # The same report about attempt 1 is a failure of it.
    driver.feed(WorkerLost(0, WorkerLostError(0, "was killed"), attempt=1))
    assert driver.machine.attempt.outcome is not None


def test_a_deadline_set_by_an_ended_attempt_is_ignored():
    driver = Driver([Recording()])
    driver.join_all()
    assert driver.feed(StopDeadline(attempt=7)) == []
    assert driver.feed(GoodbyeDeadline(attempt=7)) == []
