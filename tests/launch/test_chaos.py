"""Chaos: SIGKILLs from outside at random moments of every phase of a resumable job, each
run compared with the uninterrupted one (tests/helpers/chaos.py; ``make chaos N=...`` for
long campaigns).

The job is tests/helpers/resume_job.py's deterministic Keras one, shortened (8 epochs: a
stop, LR cuts and a restore of the best weights still happen). The schedule is drawn from
a seed, printed, and can be set with ``DISTCB_CHAOS_SEED``; every kill must end in a run
identical to the uninterrupted one (History, decisions, stopped and best epochs, final
learning rates, every rank's weights, CSV and checkpoint bytes, and the scalar series,
epoch and batch, that TensorBoard reads back from the job's event files: every run, tag,
step and value, read with TensorBoard's own EventAccumulator). The harness also counts a
failure that names its cause ("loud") apart from a silent difference; here no kill may
fail at all, since every phase is one the job recovers from.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.helpers import chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
KILLS = int(os.environ.get("DISTCB_CHAOS_KILLS", "30"))
JOBS = 3  # runs at a time: workers mostly wait (imports, barriers) on 2 cores


def test_every_random_kill_ends_identical(tmp_path):
    seed = int(os.environ.get("DISTCB_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"chaos seed {seed} (DISTCB_CHAOS_SEED={seed} replays this schedule)")
    done = chaos.campaign(KILLS, seed=seed, jobs=JOBS, workdir=str(tmp_path), log=print)
    print(chaos.table(done.outcomes))
    killed = [o for o in done.outcomes if o.status != "missed"]
    assert len(killed) >= min(KILLS, 30) * 0.9, "too many kills found no phase to land in"
    assert {o.kill.phase for o in killed} == set(chaos.PHASES), "a phase was never killed in"
    silent = [o for o in done.outcomes if o.status == "SILENT"]
    assert not silent, [f"{o.kill.describe()}: {o.detail}" for o in silent]
    failed = [o for o in done.outcomes if o.status not in ("identical", "missed")]
    assert not failed, [f"{o.kill.describe()}: {o.status} {o.detail}" for o in failed]
