"""The worker's protocol state machine: every cell of its phase table, and its transitions."""

import pytest

from distcb.protocol.decisions import EffectPoint, SetLearningRate, StopTraining
from distcb.protocol.errors import CoordinatorLostError, JobFailedError, ProtocolError
from distcb.protocol.messages import (
    COORDINATOR_MESSAGES,
    Abort,
    EpochEnd,
    EpochReply,
    Heartbeat,
    JoinParams,
    Progress,
    Start,
    TrainEndReply,
)
from distcb.worker.protocol import WorkerPhase, WorkerProtocol

SAMPLE = {
    Start: Start(ahead_steps=4),
    Progress: Progress(epoch=0, processed_step=3),
    EpochReply: EpochReply(epoch=0),
    TrainEndReply: TrainEndReply(),
    Abort: Abort(reason="rank 1 died"),
    Heartbeat: Heartbeat(),
}


def in_phase(phase: WorkerPhase) -> WorkerProtocol:
    """A protocol driven into `phase` through its real transitions."""
    protocol = WorkerProtocol(0, 2)
    if phase is WorkerPhase.CONNECTING:
        return protocol
    protocol.join(JoinParams(epochs=2))
    if phase is WorkerPhase.JOINED:
        return protocol
    protocol.receive(Start(ahead_steps=4))
    protocol.take_start()
    protocol.begin_epoch(0)
    if phase is WorkerPhase.TRAINING:
        return protocol
    if phase is WorkerPhase.AT_BARRIER:
        protocol.end_epoch(EpochEnd(rank=0, epoch=0, logs={}))
        return protocol
    protocol.end_training()
    if phase is WorkerPhase.ENDING:
        return protocol
    protocol.receive(TrainEndReply())
    protocol.finish_training()
    assert protocol.phase is WorkerPhase.DONE
    return protocol


# Written out from the protocol's specification, not read from ACCEPTS. A heartbeat is
# valid in every phase; after DONE everything is ignored (the worker is leaving).
P = WorkerPhase
EXPECTED: dict[WorkerPhase, set[type]] = {
    P.CONNECTING: {Heartbeat},
    P.JOINED: {Start, Abort, Heartbeat},
    P.TRAINING: {Progress, Abort, Heartbeat},  # a train-end reply only after an abort
    P.AT_BARRIER: {Progress, EpochReply, Abort, Heartbeat},
    P.ENDING: {Progress, EpochReply, TrainEndReply, Abort, Heartbeat},
    P.DONE: set(SAMPLE),
}


def test_the_samples_cover_every_coordinator_message():
    assert set(SAMPLE) == set(COORDINATOR_MESSAGES)


@pytest.mark.parametrize("phase", list(WorkerPhase))
@pytest.mark.parametrize("kind", sorted(SAMPLE, key=lambda k: k.type), ids=lambda k: k.type)
def test_every_cell_of_the_phase_table(phase, kind):
    protocol = in_phase(phase)
    message = SAMPLE[kind]
    if kind in EXPECTED[phase]:
        protocol.receive(message)
    else:
        with pytest.raises(ProtocolError, match=f"sent '{message.type}' while"):
            protocol.receive(message)


@pytest.mark.parametrize("phase", [WorkerPhase.TRAINING, WorkerPhase.AT_BARRIER])
def test_a_train_end_reply_after_an_abort_ends_the_wait(phase):
    protocol = in_phase(phase)
    protocol.receive(Abort(reason="rank 1 died"))
    protocol.receive(TrainEndReply(error="rank 1 died"))
    assert protocol.epoch_reply_ready()
    if phase is WorkerPhase.AT_BARRIER:
        # The coordinator said the job failed: not a lost coordinator, nothing to retry.
        with pytest.raises(JobFailedError, match="^the job failed: rank 1 died$"):
            protocol.finish_epoch()


def test_window_rule_and_due_decisions():
    protocol = in_phase(WorkerPhase.TRAINING)
    # Nothing processed yet (-1), window 4: steps 0 to 3 may begin.
    assert protocol.may_begin(3)
    assert not protocol.may_begin(4)
    protocol.receive(Progress(epoch=0, processed_step=2))
    assert protocol.may_begin(6)
    assert not protocol.may_begin(7)
    stop = StopTraining(at=EffectPoint.batch(0, 7))
    lr = SetLearningRate(at=EffectPoint.epoch_end(0), learning_rate=0.5)
    protocol.receive(Progress(epoch=0, processed_step=2, decisions=(stop, lr)))
    assert protocol.begin_batch(6) == []
    assert protocol.begin_batch(7) == [stop]
    protocol.end_epoch(EpochEnd(rank=0, epoch=0, logs={}))
    protocol.receive(EpochReply(epoch=0))
    assert protocol.finish_epoch() == [lr]


def test_an_epoch_reply_for_another_epoch_is_a_protocol_error():
    protocol = in_phase(WorkerPhase.AT_BARRIER)
    with pytest.raises(ProtocolError, match="epoch 3's reply arrived at the barrier of epoch 0"):
        protocol.receive(EpochReply(epoch=3))


def test_an_abort_before_start_fails_the_start_with_its_reason():
    protocol = in_phase(WorkerPhase.JOINED)
    protocol.receive(Abort(reason="rank 1 trains for epochs=3"))
    assert protocol.start_ready()
    with pytest.raises(JobFailedError, match="failed before training started: rank 1"):
        protocol.take_start()


@pytest.mark.parametrize("restart", [False, True])
def test_a_coordinator_gone_after_its_abort_is_the_failure_it_announced(restart):
    protocol = in_phase(WorkerPhase.JOINED)
    protocol.receive(Abort(reason="rank 1 trains for epochs=3", restart=restart))
    protocol.lose(CoordinatorLostError("the coordinator closed the connection"))
    with pytest.raises(CoordinatorLostError if restart else JobFailedError) as info:
        protocol.take_start()
    if not restart:  # it exited after saying why: say that, not "lost, retry me"
        assert str(info.value) == "the job failed: rank 1 trains for epochs=3"
    else:
        assert not isinstance(info.value, JobFailedError)


def test_an_abort_with_restart_before_start_is_a_retry_not_a_failure():
    protocol = in_phase(WorkerPhase.JOINED)
    protocol.receive(Abort(reason="rank 1 was preempted", restart=True))
    with pytest.raises(CoordinatorLostError, match="rank 1 was preempted") as info:
        protocol.take_start()
    assert not isinstance(info.value, JobFailedError)


def test_progress_of_an_earlier_epoch_does_not_open_the_window():
    protocol = in_phase(WorkerPhase.TRAINING)
    protocol.end_epoch(EpochEnd(rank=0, epoch=0, logs={}))
    protocol.receive(Progress(epoch=0, processed_step=100))
    protocol.receive(EpochReply(epoch=0))
    protocol.finish_epoch()
    protocol.begin_epoch(1)
    assert protocol.processed_known() == -1
    assert not protocol.may_begin(4)
