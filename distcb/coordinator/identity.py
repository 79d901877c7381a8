"""A job's identity, the workers' part: what their `fit` parameters say about the computation.

`describe_job` (journal.py) covers what the coordinator knows before any worker
joins: the world size and the callbacks with their arguments. What each worker
trains is known only once it joins (`JoinParams`): the epochs, the steps and
samples behind each epoch, the batch size, the compiled metrics and their
directions, the starting learning rate, the Keras flavour and the seed given to
`WorkerCallback`. The first attempt that runs against a journal records them in
job.json, or, when job.json already holds them, refuses a job whose workers
differ, naming the difference ("epochs: the journal's job has 20, this job 25").

What distcb cannot see stays outside: a seed set with `keras.utils.set_random_seed`
alone, the data, the model's layers. The README's "Failures and restarts" says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

from distcb.coordinator.journal import JOB_FILE, Journal, JournalMismatchError
from distcb.protocol.integrity import read_sealed, write_sealed
from distcb.protocol.logs import to_json_value
from distcb.protocol.messages import JoinParams

# JoinParams fields that change what the job computes (`verbose` and `host` do not).
IDENTITY_FIELDS = (
    "epochs",
    "initial_epoch",
    "steps",
    "samples",
    "val_samples",
    "batch_size",
    "metrics",
    "directions",
    "learning_rate",
    "flavour",
    "seed",
)


def describe_workers(params: Mapping[int, JoinParams]) -> dict[str, dict[str, Any]]:
    """Each rank's identity fields, as JSON (keys: the rank as a string)."""
    out: dict[str, dict[str, Any]] = {}
    for rank, worker in sorted(params.items()):
        values = msgspec.to_builtins(worker)
        out[str(rank)] = {name: to_json_value(values.get(name)) for name in IDENTITY_FIELDS}
    return out


def workers_difference(journal: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """How the workers described by `now` differ from the journal's, in words (None: same).

    A field that differs alike on every rank is named once ("epochs: ..."), one that
    differs on some ranks names the first of them ("rank 1 samples: ...").
    """
    if sorted(journal) != sorted(now):
        return f"ranks: the journal's job has {sorted(journal)}, this job {sorted(now)}"
    for name in IDENTITY_FIELDS:
        pairs = {rank: (journal[rank].get(name), now[rank].get(name)) for rank in sorted(now)}
        differing = {rank: pair for rank, pair in pairs.items() if pair[0] != pair[1]}
        if not differing:
            continue
        was, is_now = next(iter(differing.values()))
        if len(differing) == len(pairs) and len(set(map(repr, differing.values()))) == 1:
            return f"{name}: the journal's job has {was!r}, this job {is_now!r}"
        rank = min(differing, key=int)
        return f"rank {rank} {name}: the journal's job has {was!r}, this job {is_now!r}"
    return None


def check_workers(journal: Journal, workers: dict[str, dict[str, Any]]) -> None:
    """Refuse a journal whose job had other workers; record them in job.json if it has none.

    Call after `Journal.check_job` (job.json exists and matches the coordinator's part).

    Raises:
        JournalMismatchError: job.json records other worker parameters (says which).
        IntegrityError: job.json is damaged.
    """
    recorded = read_sealed(os.path.join(journal.directory, JOB_FILE))
    if not isinstance(recorded, dict):
        recorded = {}
    before = recorded.get("workers")
    if before is None:
        write_sealed(journal.directory, JOB_FILE, {**recorded, "workers": workers})
        return
    difference = workers_difference(before, workers)
    if difference is not None:
        raise JournalMismatchError(
            f"{journal.directory} holds the journal of another job: {difference}. Use another "
            "run directory, or remove this one to start over."
        )
