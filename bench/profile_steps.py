"""Where the microseconds of a streaming step go: py-spy on a worker and its coordinator.

    python bench/profile_steps.py [window|stream] [--pinned] [--out DIR]

One `StepJob` (bench/steps.py) runs a plain fit, then a distcb fit of the given
configuration while py-spy samples both processes (``--threads --nonblocking``,
500 Hz, on-CPU samples only). Each sample is put in one bucket by the first rule
below that matches its stack; a bucket's samples over the rate and the steps give
its CPU µs per step. The thread CPU clocks of the fit (bench/step_worker.py) are
printed beside it, so the sampled split can be read against exact totals.

`main()` returns the Markdown section `make bench` adds to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import load_line  # noqa: E402
from steps import PY_SPY_RATE_HZ, StepJob  # noqa: E402

# (bucket, substrings of a stack that put a sample there), first match wins.
WORKER_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("training thread: distcb buffering (batches.py)", ("MainThread", "batches.py")),
    ("training thread: distcb Keras hooks", ("MainThread", "worker_callback.py")),
    ("training thread: Keras + TensorFlow (the step itself)", ("MainThread",)),
    ("IO thread: logs to floats (clean_logs)", ("-io", "clean_")),
    ("IO thread: frames: take + pack (batches.py)", ("-io", "batches.py")),
    ("IO thread: encode + websocket send", ("-io", "send")),
    ("IO thread: read coordinator messages", ("-io", "_read")),
    ("IO thread: heartbeats", ("-io", "_heartbeat")),
    ("IO thread: event loop (callbacks, wake-ups, timers)", ("-io",)),
    ("other threads", ()),
]
COORDINATOR_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("callback thread: callback hooks (callback_list.py)", ("distcb-callbacks", "callback_list")),
    ("callback thread: decision recorder", ("distcb-callbacks", "model_proxy")),
    ("callback thread: other", ("distcb-callbacks",)),
    ("loop: merge (aggregate.py)", ("aggregate.py",)),
    ("loop: decode (msgspec)", ("decode_from_worker",)),
    ("loop: websocket receive (aiohttp)", ("receive",)),
    ("loop: roster checks", ("roster.py", "_check")),
    ("loop: progress broadcast + send", ("broadcast",)),
    ("loop: hop to the callback thread", ("_in_callbacks",)),
    ("loop: engine", ("engine.py",)),
    ("loop: event loop (callbacks, wake-ups, timers)", ("MainThread",)),
    ("other threads", ()),
]


# Leaf frames of a thread that waits (epoll, an executor's queue, a lock): py-spy's
# non-blocking mode can count them as busy; they are left out.
IDLE_LEAVES = (
    "select (selectors.py",
    "_worker (concurrent/futures/thread.py:81)",
    "Condition.wait (threading.py",
    "_wait_for_tstate_lock",
)


def read_stacks(path: str) -> list[tuple[str, int]]:
    """py-spy's raw output: (stack as text, samples), waiting threads left out."""
    out = []
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            leaf = stack.rsplit(";", 1)[-1]
            if any(idle in leaf for idle in IDLE_LEAVES):
                continue
            out.append((stack, int(count)))
    return out


def buckets(
    stacks: list[tuple[str, int]], rules: list[tuple[str, tuple[str, ...]]]
) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for stack, samples in stacks:
        for name, needles in rules:
            if all(n in stack for n in needles):
                counts[name] += samples
                break
    return dict(counts)


async def profile(kind: str, pinned: bool, out_dir: str) -> dict[str, Any]:
    async with StepJob(pinned=pinned) as job:
        plain = await job.plain()
        prefix = os.path.join(out_dir, kind)
        fit = await job.distcb(kind, profile=prefix)
    worker = buckets(read_stacks(prefix + ".worker.txt"), WORKER_RULES)
    coordinator = buckets(read_stacks(prefix + ".coordinator.txt"), COORDINATOR_RULES)
    return {"plain": plain, "fit": fit, "worker": worker, "coordinator": coordinator}


def _thread_of(rule: tuple[str, tuple[str, ...]], process: str) -> str:
    needles = rule[1]
    if process == "coordinator":
        return "coordinator"
    if needles and needles[0] == "MainThread":
        return "training"
    if needles and needles[0] == "-io":
        return "io"
    return "other"


def section(kind: str, result: dict[str, Any]) -> str:
    """Each thread's exact CPU per step, split in the proportions py-spy sampled."""
    fit, plain = result["fit"], result["plain"]
    exact = {
        "training": fit["training_us"],
        "io": fit["io_us"],
        "coordinator": fit["coordinator_us"],
    }
    lines = [
        f"#### `{kind}`",
        "",
        "| process | where | CPU µs/step | share of that thread |",
        "|---|---|---:|---:|",
    ]
    for process, rules in (("worker", WORKER_RULES), ("coordinator", COORDINATOR_RULES)):
        counts = result[process]
        for thread in ("training", "io", "coordinator"):
            mine = [(r[0], counts.get(r[0], 0)) for r in rules if _thread_of(r, process) == thread]
            total = sum(c for _, c in mine)
            if not mine or not total:
                continue
            for name, samples in sorted(mine, key=lambda kv: -kv[1]):
                if samples:
                    share = samples / total
                    lines.append(
                        f"| {process} | {name} | {exact[thread] * share:.1f} | {share:.0%} |"
                    )
    lines += [
        "",
        "Thread CPU clocks of the same fits, µs/step (`native`: TensorFlow's own threads, "
        "the process total less its Python threads):",
        "",
        "| fit | wall | worker CPU | training thread | IO thread | native | coordinator CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in (("plain", plain), (kind, fit)):
        lines.append(
            f"| {label} | {row['wall_us']:.0f} | {row['cpu_us']:.0f} | {row['training_us']:.0f} "
            f"| {row['io_us']:.1f} | {row['native_us']:.0f} | "
            f"{row.get('coordinator_us', 0.0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(kinds: tuple[str, ...] = ("stream", "window"), pinned: bool = False) -> str:
    header = load_line()
    with tempfile.TemporaryDirectory(prefix="distcb-profile-") as out_dir:
        parts = [section(k, asyncio.run(profile(k, pinned, out_dir))) for k in kinds]
    intro = [
        "## Where a streaming step's microseconds go (py-spy)",
        "",
        f"Command: `python bench/profile_steps.py` (also run by `make bench`). {header}",
        "",
        "A plain fit, then a distcb fit of each configuration (1200 steps), with py-spy "
        f"sampling the worker and the coordinator ({PY_SPY_RATE_HZ} Hz, `--threads "
        "--nonblocking`). Each thread's exact CPU time per step (its CPU clock) is split "
        "in the proportions of that thread's samples, bucketed by the first rule of "
        "`bench/profile_steps.py` its stack matches; samples of a thread waiting in "
        "epoll, an executor's queue or a lock are left out. py-spy counts a thread that is "
        "runnable but waiting for a CPU, or for the GIL, as busy: on a loaded machine its "
        "raw counts overstate, and time the training thread spends waiting for the GIL "
        "inside distcb's hooks shows up as theirs (compare the hooks' CPU in "
        '"distcb alone"). docs/performance.md reads these tables.',
        "",
    ]
    return "\n".join(intro) + "\n".join(parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", default=["stream", "window"])
    parser.add_argument("--pinned", action="store_true")
    options = parser.parse_args()
    print(main(tuple(options.kinds), options.pinned))
