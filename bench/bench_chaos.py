"""Chaos figures: SIGKILLs from outside in every phase of a resumable job, per phase.

    python bench/bench_chaos.py [--kills N] [--seed S] [--jobs J]

Runs tests/helpers/chaos.py's campaign (the deterministic Keras job of
tests/helpers/resume_job.py, killed at random moments of every phase, each run compared with
an uninterrupted one) and writes the per-phase table for docs/BENCHMARKS.md: kills, how many
ended identical, loud failures and their causes, silent differences, hangs, and the recovery
time (the kill to a restarted worker training again). ``make chaos N=...`` prints the same
table.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.helpers import chaos  # noqa: E402 (the repository root, above)


def markdown(done: chaos.Campaign, command: str, seed: int, load: tuple[str, str]) -> str:
    outcomes = done.outcomes
    count = {s: sum(o.status == s for o in outcomes) for s in ("identical", "loud", "missed")}
    bad = [o for o in outcomes if o.status in ("SILENT", "hang", "LOUD-UNNAMED")]
    lines = [
        "## Chaos: SIGKILLs in every phase of a resumable job (issue 20)",
        "",
        f"Command: `{command}` (seed {seed}; `make chaos N=...` prints the same table). "
        f"Load average (1, 5, 15 min) before / after: {load[0]} / {load[1]}.",
        "",
        "The deterministic job of tests/helpers/resume_job.py (2 Keras 3 replicas, 8 epochs: "
        "a stop, LR cuts, a restore of the best weights; `max_restarts=5`), killed by SIGKILL "
        "from outside at a random moment of a phase (tests/helpers/chaos.py: up to three "
        "kills per run, early, middle and late; a launcher kill is followed by `resume=True`), "
        "each run compared with an uninterrupted one: History, decisions, stopped and best "
        "epochs, final learning rates, every rank's weights digest, CSV and checkpoint bytes. "
        "A run's outcome counts for each of its kills. Recovery: from the kill to a restarted "
        "worker training again (TensorFlow imported, joined, backup loaded; the relaunch "
        "included after a launcher kill).",
        "",
        chaos.table(outcomes),
        "",
        f"{len(outcomes)} kills in {done.wall_s:.0f} s (the uninterrupted run: "
        f"{done.reference_wall_s:.1f} s): {count['identical']} identical, {count['loud']} "
        f"loud failures, {len(bad)} silent differences, hangs or unnamed failures, "
        f"{count['missed']} that found no phase to land in.",
    ]
    return "\n".join(lines) + "\n"


def main(kills: int = 45, quick: bool = False, seed: int | None = None, jobs: int = 3) -> str:
    if quick:
        kills = 9
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    before = _load()
    with tempfile.TemporaryDirectory(prefix="distcb-bench-chaos-") as workdir:
        done = chaos.campaign(kills, seed=seed, jobs=jobs, workdir=workdir)
    command = f"python bench/bench_chaos.py --kills {kills} --seed {seed} --jobs {jobs}"
    return markdown(done, command, seed, (before, _load()))


def _load() -> str:
    return str([round(x, 2) for x in os.getloadavg()])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=45)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=3)
    options = parser.parse_args()
    print(main(options.kills, seed=options.seed, jobs=options.jobs))
