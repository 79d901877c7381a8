"""Damage under the run directory, then resume=True, with real processes: the job either
ends exactly as the uninterrupted job does (it went on from an earlier generation) or fails
loudly naming the damaged file; never exit 0 with other results. And a chief lost after
the train-end reply, before it said it was done, is a failure of that rank.

The job is tests/helpers/resume_job.py (Keras 3 replicas, 2 workers, deterministic). It is
interrupted once (rank 1 SIGKILLed in epoch 7, no restarts allowed); then, for a sample of
the files it left (one of each kind: job.json, journal entries, commit markers, each
backup file, manifests, snapshots, the chief's log of saved outputs), one file is damaged
(a flipped byte, cut to half, or replaced by a link to another file of its kind or to an
intact copy), the job resumes, and the run directory is put back for the next file. The
same path is reused: the job's identity records its callbacks' file paths.

The job's outputs are damaged too, each in every way: the CSV (its rows up to the barrier
are checked against the SHA-256 the journal recorded) and the best checkpoint (checked
against the chief's backup). These resumes must be loud: the CSV's rows and a best
checkpoint that the replayed epochs need not save again are the job's results. One file
per resume, so that the error can only be about that file; a loud resume ends before
training, so they cost little. TensorBoard's event files are in the sample too (checked
against the size and SHA-256 the journal recorded).
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.helpers.damage import DAMAGES, damage, files_under, kind
from tests.launch.test_exact_resume import assert_same, faults, outcome, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
HARNESS = ("pid-", "report-", "faults", "timeline")  # the test job's own files
OUTPUTS = ("log.csv", "best.weights.h5")
BEFORE_DONE = dict(name="z", rank=0, epoch=-1, batch=-1, at="before_done", signal="KILL")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    _, output = run_job(run_dir, "--max-restarts", "1")
    return outcome(run_dir, output)


def sample(run_dir: str) -> list[tuple[str, str]]:
    """One file of each kind (the newest: the one a resume reads first), each with a
    damage, cycling through the damages so that each is done to several kinds; then each
    output with each damage."""
    files = files_under(run_dir, exclude=(*HARNESS, *OUTPUTS))
    by_kind: dict[str, list[str]] = {}
    for relative in files:
        by_kind.setdefault(kind(relative), []).append(relative)
    picked = []
    for index, (_, group) in enumerate(sorted(by_kind.items())):
        newest = max(group, key=lambda p: (_generation(p), p))
        picked.append((newest, DAMAGES[index % len(DAMAGES)]))
    return picked + [(output, how) for output in OUTPUTS for how in DAMAGES]


def _generation(path: str) -> int:
    """The epoch (or snapshot id) a file belongs to; 0 for job.json."""
    found = re.findall(r"(?:epoch|snapshot)-(\d+)", path)
    return int(found[-1]) if found else 0


def test_damage_anywhere_resumes_identically_or_fails_naming_the_file(tmp_path, uninterrupted):
    run_dir = str(tmp_path / "run")
    code, output = run_job(  # resume=True on an empty directory: a journal, no restarts
        run_dir,
        "--resume",
        "--faults",
        faults({"name": "k", "rank": 1, "epoch": 7, "batch": 2, "signal": "KILL"}),
        expect_ok=False,
    )
    assert code != 0, output[-3000:]
    pristine = str(tmp_path / "pristine")
    shutil.copytree(run_dir, pristine, symlinks=True)
    cases = sample(run_dir)
    kinds = {kind(path) for path, _ in cases}
    # Every kind of file a resume reads is in the sample.
    for expected in (
        "state/job.json",
        "state/epoch-N.json",
        "state/epoch-N.committed",
        "backups/rank-N/outputs.json",
        *OUTPUTS,
    ):
        assert kind(expected) in kinds
    for name in ("training_state.bin", "manifest.json"):
        assert kind(f"backups/rank-0/epoch-1/{name}") in kinds
    assert kind("backups/rank-0/snapshot-1.npz") in kinds
    assert any(k.startswith(("tb/train/events.out", "tb/validation/events.out")) for k in kinds)
    outcomes = {}
    by_case = {}
    for relative, how in cases:
        shutil.rmtree(run_dir)
        shutil.copytree(pristine, run_dir, symlinks=True)
        path = os.path.join(run_dir, relative)
        candidates = [os.path.join(run_dir, f) for f in files_under(run_dir)]
        damage(path, how, candidates, str(tmp_path / "outside"))
        started = time.monotonic()
        code, output = run_job(run_dir, "--resume", expect_ok=False)
        took_s = time.monotonic() - started
        if code == 0:
            assert_same(outcome(run_dir, output), uninterrupted)
            outcomes[relative] = f"{how}: identical"
            by_case[relative, how] = "identical"
        else:
            assert path in output, (
                f"{how} {relative}: exit {code} without naming it\n" + (output[-3000:])
            )
            assert "RESULT " not in output
            outcomes[relative] = f"{how}: loud"
            by_case[relative, how] = "loud"
            if relative in OUTPUTS:
                assert f"IntegrityError: {path}: " in output, output[-3000:]
            if re.match(r"backups/rank-\d+/epoch-", relative):  # what the user can do
                assert "to go on from the generation before" in output, output[-3000:]
        print(f"{relative}: {outcomes[relative]} ({took_s:.0f} s)")
    # The newest generation's journal files fall back; a damaged backup or job.json is loud.
    assert outcomes["state/job.json"].endswith("loud")
    entry = [p for p, _ in cases if kind(p) == "state/epoch-N.json"][0]
    marker = [p for p, _ in cases if kind(p) == "state/epoch-N.committed"][0]
    assert outcomes[entry].endswith("identical")
    assert outcomes[marker].endswith("identical")
    weights = [p for p, _ in cases if p.endswith("training_state.bin")][0]
    assert outcomes[weights].endswith("loud")
    # The outputs: every damage to the CSV's rows or to the best checkpoint is loud.
    for output in OUTPUTS:
        for how in DAMAGES:
            assert by_case[output, how] == "loud", (output, how)


@pytest.mark.parametrize("max_restarts", [0, 1])
def test_a_chief_lost_after_the_train_end_reply_is_a_failure_of_that_rank(
    tmp_path, uninterrupted, max_restarts
):
    # The train-end decisions (restore the best weights) went out, but rank 0 dies before it
    # says it is done: whether it applied them and ran what follows fit is unknown.
    run_dir = str(tmp_path)
    code, output = run_job(
        run_dir,
        "--max-restarts",
        str(max_restarts),
        "--faults",
        faults(
            {
                "name": "z",
                "rank": 0,
                "epoch": -1,
                "batch": -1,
                "at": "before_done",
                "signal": "KILL",
            }
        ),
        expect_ok=max_restarts > 0,
    )
    named = "rank 0 disconnected"
    assert named in output
    assert "after the train end but before it said it was done" in output
    if max_restarts == 0:
        assert code != 0
        assert "RESULT " not in output
        return
    # Restarted per the policy: the final barrier's entry leaves only the train end.
    result = outcome(run_dir, output)
    assert_same(result, uninterrupted)
    last = uninterrupted["epochs"][-1]
    assert result["resumed_after"] == {"0": last, "1": last}
