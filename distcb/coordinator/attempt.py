"""One attempt of a job: from the join to its ending (the train end, a failure, a restart).

A job that restarts runs several attempts, one after the other; each has its own
roster (connections), batch merger, model proxy and phase, and starts from a
point: the job's beginning, or the committed barrier `resume_from`. The phases::

    JOINING -> TRAINING -> ENDING -> DONE
         \\________\\_________\\-> (an outcome decided by the FailurePolicy: the
                                  survivors are stopped at a common point,
                                  on_train_end still runs)
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from distcb.coordinator.batch_merge import BatchMerger
from distcb.coordinator.failure_policy import FailJob, Outcome, RestartFromBarrier
from distcb.coordinator.journal import JournalEntry
from distcb.coordinator.model_proxy import DecisionRecorder, ModelProxy
from distcb.coordinator.roster import Roster
from distcb.protocol.messages import EpochEnd


class Phase(enum.Enum):
    JOINING = "joining"
    TRAINING = "training"
    ENDING = "ending"
    DONE = "done"


@dataclass(eq=False)
class Attempt:
    """The state of one attempt.

    `number` is 0 for the first attempt, then one more after each restart; `roster`
    its workers; `resume_from` the journal entry it goes on from (None: the start).
    """

    number: int
    roster: Roster
    recorder: DecisionRecorder
    model: ModelProxy
    merger: BatchMerger
    resume_from: JournalEntry | None = None
    phase: Phase = Phase.JOINING
    epoch: int = 0
    outcome: Outcome | None = None  # decided by the FailurePolicy, once
    epoch_ends: dict[int, EpochEnd] = field(default_factory=dict)
    progress_sent: int = -1  # the last processed step told to the workers this epoch
    last_progress: float = field(default_factory=time.monotonic)
    finished: bool = False  # the driver stops feeding it (`commands.Finish` went out)

    def concerns(self, attempt: int | None) -> bool:
        """Whether a report about attempt `attempt` (None: unnamed) is about this one: a
        launcher's report about an ended attempt (a survivor exiting "retry me" as told,
        seen only once the restart began) is no failure of this one."""
        return attempt is None or attempt == self.number

    @property
    def failure(self) -> BaseException | None:
        """The error the job fails with, once decided."""
        return self.outcome.error if isinstance(self.outcome, FailJob) else None

    @property
    def restarting(self) -> RestartFromBarrier | None:
        """The restart this attempt ends in, once decided."""
        return self.outcome if isinstance(self.outcome, RestartFromBarrier) else None

    @property
    def hooks_run(self) -> bool:
        """Whether callback hooks still run: not on a broken chain, nor in an attempt that
        ends in a restart (what it would record is rolled back)."""
        return self.outcome is None or self.outcome.hooks_run
