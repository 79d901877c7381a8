"""Benchmark (issue 22): the coordinator before and after the sans-IO machine.

Issue 22 split the coordinator into a sans-IO state machine driven by a thin async
engine (``distcb/coordinator/machine.py``, ``engine.py``), moved the server into
``distcb/server/`` and made the callbacks' extension points typed protocols
(``isinstance`` against ``runtime_checkable`` protocols, slower than ``getattr``).
Its Done-when: no per-step or barrier regression. This script measures both trees in
one run, with the load generator of ``bench/bench_scale.py`` (``bench/loadgen.py``: a
real ``Coordinator`` behind the tree's websocket server on loopback, real
``WorkerSession`` s with a scripted model in other processes):

1. **Per step**, N = 8 workers, a coordinator callback with a batch hook, every batch
   log of every worker merged and handed to it. *deciding*: the callback may decide
   on batch ends (the window rule is on); *observing*: it says it does not
   (``decides_on_batch = False``). Batch logs merged per second between the first and
   the last epoch end, and the coordinator process's CPU µs per batch log.
2. **Epoch barrier**, 2 and 8 workers, epochs of no steps, no batch hooks: per job
   the median over its epochs (the first 5 skipped) of the last arrival's wait, from
   its epoch end sent to its reply (``CLOCK_MONOTONIC`` is common to every process),
   and the coordinator's CPU ms per barrier.

BEFORE is commit 26789c1 (main before issue 22), extracted with ``git archive`` into a
temporary directory unless ``--before-tree`` names a checkout of it; AFTER is this
checkout. Every process of a job has PYTHONPATH set to one tree (the workers too: the
wire protocol went from version 2 to 3 in between). The two trees
alternate job by job (the order flips every job kind and every round), and the report
gives min–median–max over rounds per tree and the after/before ratio of each round's
adjacent pair. About 8 minutes of wall time on a shared 2-core machine.

    python bench/bench_before_after.py [--rounds 5] [--before-tree PATH] [--json]
    python bench/bench_before_after.py --only deciding --rounds 10   # one path, more rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_scale import SKIP, barrier_latencies, ingest, run_job  # noqa: E402
from common import load_average, load_line, spread  # noqa: E402

BEFORE_COMMIT = "26789c1"
TREES = ("before", "after")
ROUNDS = 5
WORKERS_PER_PROCESS = 4  # 8 workers in 2 processes: fewer start-ups on a 2-core machine
# kind: (workers, loadgen mode, epochs, steps per epoch)
JOBS: dict[str, tuple[int, str, int, int]] = {
    "deciding": (8, "deciding", 4, 800),
    "observing": (8, "stream", 4, 1500),
    "barrier2": (2, "barrier", 45, 0),
    "barrier8": (8, "barrier", 45, 0),
}
COMMAND = "python bench/bench_before_after.py"


def before_tree(path: str | None, scratch: str) -> str:
    """A checkout of BEFORE_COMMIT: `path`, or one extracted into `scratch`."""
    if path:
        return path
    archive = subprocess.run(["git", "-C", ROOT, "archive", BEFORE_COMMIT], capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(
            f"`git archive {BEFORE_COMMIT}` failed ({archive.stderr.decode().strip()}): run "
            "from a full clone, or pass --before-tree"
        )
    subprocess.run(["tar", "-x", "-C", scratch], input=archive.stdout, check=True)
    return scratch


def figures(kind: str, report: dict[str, Any]) -> dict[str, float]:
    """What one job measured, in the report's units."""
    n = JOBS[kind][0]
    if JOBS[kind][1] == "barrier":
        last_wait, _ = barrier_latencies(report["ranks"])
        marks = report["epochs"][SKIP:]
        cpu = (marks[-1]["cpu_s"] - marks[0]["cpu_s"]) / max(1, len(marks) - 1)
        return {"p50_ms": statistics.median(last_wait) * 1e3, "cpu_ms": cpu * 1e3}
    rate = ingest(report, n)
    return {"logs_per_s": rate["records_per_s"], "cpu_us": 1e6 / rate["records_per_cpu_s"]}


def measure(
    rounds: int, before: str | None = None, kinds: tuple[str, ...] = tuple(JOBS)
) -> dict[str, Any]:
    """{kind: {tree: [figures per round]}}, each round's trees adjacent, order rotated."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        kind: {tree: [] for tree in TREES} for kind in kinds
    }
    jobs = {kind: JOBS[kind] for kind in kinds}
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"before": before_tree(before, scratch), "after": ROOT}
        for r in range(rounds):
            for k, (kind, (n, mode, epochs, steps)) in enumerate(jobs.items()):
                order = TREES if (r + k) % 2 == 0 else TREES[::-1]
                for tree in order:
                    report = asyncio.run(
                        run_job(n, mode, epochs, steps, paths[tree], WORKERS_PER_PROCESS)
                    )
                    results[kind][tree].append(figures(kind, report))
                    print(f"round {r} {kind} {tree}: {results[kind][tree][-1]}", flush=True)
    return results


ROWS = (
    # (label, kind, figure, format, higher is better)
    ("batch logs merged per second, deciding (window rule on), N = 8", "deciding", "logs_per_s",
     "{:,.0f}", True),
    ("coordinator CPU µs per batch log, deciding, N = 8", "deciding", "cpu_us", "{:.2f}", False),
    ("batch logs merged per second, observing, N = 8", "observing", "logs_per_s", "{:,.0f}",
     True),
    ("coordinator CPU µs per batch log, observing, N = 8", "observing", "cpu_us", "{:.2f}",
     False),
    ("epoch barrier p50 ms (last arrival), 2 workers", "barrier2", "p50_ms", "{:.2f}", False),
    ("coordinator CPU ms per barrier, 2 workers", "barrier2", "cpu_ms", "{:.2f}", False),
    ("epoch barrier p50 ms (last arrival), 8 workers", "barrier8", "p50_ms", "{:.2f}", False),
    ("coordinator CPU ms per barrier, 8 workers", "barrier8", "cpu_ms", "{:.2f}", False),
)  # fmt: skip


def table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| figure | before (26789c1) | after | after/before, per round | better is |",
        "|---|---:|---:|---:|---|",
    ]
    for label, kind, key, fmt, higher in ROWS:
        if kind not in results:
            continue
        before = [f[key] for f in results[kind]["before"]]
        after = [f[key] for f in results[kind]["after"]]
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        lines.append(
            f"| {label} | {spread(before, fmt)} | {spread(after, fmt)} | {spread(ratios)} "
            f"| {'higher' if higher else 'lower'} |"
        )
    return lines


def main(
    quick: bool = False,
    rounds: int = ROUNDS,
    before: str | None = None,
    kinds: tuple[str, ...] = tuple(JOBS),
) -> str:
    header = load_line()
    rounds = 1 if quick else rounds
    results = measure(rounds, before, kinds)
    lines = [
        "## Coordinator before and after issue 22 (sans-IO machine, server layer, typed "
        "extension points)",
        "",
        f"Command: `{COMMAND}` (also run by `make bench`). {header}",
        "",
        f"Before: commit {BEFORE_COMMIT} (main before issue 22, extracted with `git archive`); "
        "after: this checkout. Each job is one coordinator process behind its tree's "
        "websocket server on loopback and the workers' processes "
        f"({WORKERS_PER_PROCESS} `WorkerSession`s with a scripted model per process, "
        "`bench/loadgen.py`), every process with PYTHONPATH set to one tree (each tree's "
        "own workers: the wire protocol is version 2 before, 3 after). The trees "
        "alternate job by job, the order flipping every job kind and every round; "
        f"{rounds} rounds, min–**median**–max over them, and the ratio after/before of "
        "each round's adjacent pair. Per step: 8 workers, 3 epochs measured between the "
        f"first and the last epoch end ({JOBS['deciding'][3]} steps per epoch deciding, "
        f"{JOBS['observing'][3]} observing), one coordinator callback with a batch hook that "
        "may decide (the window rule on) or only observes. Barrier: "
        f"{JOBS['barrier8'][2] - SKIP} epochs of no steps per job (first {SKIP} skipped), "
        "the median of the last arrival's wait per job.",
        "",
        *table(results),
        "",
        f"Load average when it ended: {load_average()}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--before-tree", help=f"a checkout of {BEFORE_COMMIT} (default: extract)")
    parser.add_argument("--json", action="store_true", help="every round's figures, as JSON")
    parser.add_argument(
        "--only", nargs="+", choices=tuple(JOBS), default=tuple(JOBS), help="these jobs only"
    )
    options = parser.parse_args()
    kinds = tuple(options.only)
    if options.json:
        print(json.dumps(measure(options.rounds, options.before_tree, kinds), indent=1))
    else:
        print(main(rounds=options.rounds, before=options.before_tree, kinds=kinds))
