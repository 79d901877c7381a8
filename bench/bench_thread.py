"""Benchmark: the thread backend (issue 15): per-step cost against plain `fit`, and the time
to start a 1-worker job against the process backend.

1. Per step: the anchor's small MLP (batch 64, 1200 steps per fit, as bench_worker.py) in a
   1-worker job. The worker times, in one run: plain ``fit``, ``fit`` with
   ``WorkerCallback``, plain ``fit`` again; each distcb fit is divided by the mean of the
   plain fits around it. Two coordinator chains: an epoch-level callback (EarlyStopping:
   no batch logs travel) and a batch hook (every batch streams, as LossHistory does). The
   first whole fit is a warm-up, not counted. The
   same jobs run on the thread backend (coordinator, its callback thread and the worker in
   one process, one GIL) and on the process backend (the worker in its own process).
2. Start: a 1-worker job of one step, from the `distcb.run` call to the worker's first
   step, and to `distcb.run` returning; this process has TensorFlow imported already (a
   notebook, a debugging session), as the thread backend's users have.

Standalone: ``python bench/bench_thread.py`` prints the Markdown section.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

STEP_JOBS = 5
STEPS_PER_FIT = 1200
START_ROUNDS = 5


def step_worker(out_path: str) -> None:
    """A 1-worker job's train_fn: plain, distcb, plain; µs per step of each, to a file."""
    import keras
    import numpy as np

    import distcb.keras

    rng = np.random.default_rng(0)
    x = rng.random((64 * 400, 20), dtype="float32")
    y = (x.sum(1) > 10).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[: 64 * 20], y[: 64 * 20], batch_size=64, epochs=1, verbose=0)

    class StepClock(keras.callbacks.Callback):
        """Wall time and this process's CPU time (every thread of it) over the steps."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if not hasattr(self, "started"):
                self.started = (time.perf_counter(), time.process_time())

        def on_train_end(self, logs: Any = None) -> None:
            self.ended = (time.perf_counter(), time.process_time())

    def timed(callbacks: list[Any]) -> tuple[float, float]:
        clock = StepClock()
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[clock, *callbacks])
        wall, cpu = (b - a for a, b in zip(clock.started, clock.ended, strict=True))
        return wall / STEPS_PER_FIT * 1e6, cpu / STEPS_PER_FIT * 1e6

    timed([])  # warm-up: the first whole fit still traces and allocates
    plain = [timed([])]
    distcb_us = timed([distcb.keras.WorkerCallback(samples=len(x), batch_size=64)])
    plain.append(timed([]))
    with open(out_path, "w") as handle:
        json.dump({"plain": plain, "distcb": distcb_us}, handle)


def first_step_worker(out_path: str) -> None:
    """A 1-worker job of one step; writes when its first step began (wall clock)."""
    import keras
    import numpy as np

    import distcb.keras

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if batch == 0:
                with open(out_path, "w") as handle:
                    handle.write(repr(time.time()))

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 4), "float32")
    model.fit(
        x,
        x[:, :1],
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[distcb.keras.WorkerCallback(), FirstStep()],
    )


class BatchObserver:
    """A coordinator callback with a batch hook: every batch's logs stream to it."""

    def __new__(cls) -> Any:
        from distcb.callbacks import Callback

        class Observer(Callback):
            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.last = logs

        return Observer()


def per_step(backend: str, chain: str, directory: str) -> list[tuple[float, float]]:
    import distcb
    from distcb.callbacks import EarlyStopping

    ratios = []
    for job in range(STEP_JOBS):
        out = os.path.join(directory, f"steps-{backend}-{chain}-{job}.json")
        callbacks = (
            [EarlyStopping(monitor="loss", patience=100)] if chain == "epoch" else [BatchObserver()]
        )
        distcb.run(step_worker, num_workers=1, backend=backend, args=(out,), callbacks=callbacks)
        with open(out) as handle:
            result = json.load(handle)
        plain_wall = statistics.mean(p[0] for p in result["plain"])
        plain_cpu = statistics.mean(p[1] for p in result["plain"])
        ratios.append((result["distcb"][0] / plain_wall, result["distcb"][1] / plain_cpu))
        per_step.plain_us.append(plain_wall)  # type: ignore[attr-defined]
    return ratios


per_step.plain_us = []  # type: ignore[attr-defined]


def start_times(directory: str) -> dict[str, dict[str, list[float]]]:
    import distcb

    times: dict[str, dict[str, list[float]]] = {
        b: {"first_step": [], "job": []} for b in ("thread", "process")
    }
    distcb.run(first_step_worker, num_workers=1, backend="thread", args=(os.devnull,))  # warm
    for round_ in range(START_ROUNDS):
        for backend in ("thread", "process"):
            out = os.path.join(directory, f"first-{backend}-{round_}.txt")
            started = time.time()
            distcb.run(first_step_worker, num_workers=1, backend=backend, args=(out,))
            ended = time.time()
            with open(out) as handle:
                first = float(handle.read())
            times[backend]["first_step"].append(first - started)
            times[backend]["job"].append(ended - started)
    return times


def main() -> str:
    import keras  # noqa: F401  (TensorFlow imported before anything is timed)

    with tempfile.TemporaryDirectory(prefix="distcb-bench-thread-") as directory:
        steps = {
            (backend, chain): per_step(backend, chain, directory)
            for chain in ("epoch", "batch")
            for backend in ("thread", "process")
        }
        start = start_times(directory)
    plain_us = statistics.median(per_step.plain_us)  # type: ignore[attr-defined]
    median = statistics.median
    lines = [
        "## Thread backend (issue 15)",
        "",
        "Command: `python bench/bench_thread.py` (also run by `make bench`).",
        "",
        f"### Per-step cost, small MLP, batch 64, {STEPS_PER_FIT} steps per fit",
        "",
        "A 1-worker job; the worker times plain `fit`, `fit` with `WorkerCallback`, plain "
        "`fit` again, and each distcb fit is divided by the mean of the plain fits around it "
        f"(median over {STEP_JOBS} jobs per row; plain `fit`: median {plain_us:.0f} µs/step). "
        "On the thread backend the coordinator's event loop and callback thread share the "
        "worker's process and GIL.",
        "",
        "Wall time is what training takes; on a loaded machine it drifts between the fits of "
        "one job, so the table also gives the ratio of the worker process's CPU time (all its "
        "threads: on the thread backend that includes the coordinator's work; on the process "
        "backend the coordinator runs in another process and is not counted).",
        "",
        "| coordinator callbacks | backend | wall × plain, median (min–max) | "
        "CPU × plain, median (min–max) |",
        "|---|---|---|---|",
    ]
    names = {
        "epoch": "epoch-level (EarlyStopping): no batch logs travel",
        "batch": "a batch hook: every batch streams to the coordinator",
    }

    def cell(values: list[float]) -> str:
        return f"{median(values):.3f} ({min(values):.3f}–{max(values):.3f})"

    for chain in ("epoch", "batch"):
        for backend in ("thread", "process"):
            runs = steps[(backend, chain)]
            wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
            lines.append(f"| {names[chain]} | {backend} | {cell(wall)} | {cell(cpu)} |")
    thread_first = median(start["thread"]["first_step"])
    process_first = median(start["process"]["first_step"])
    lines += [
        "",
        "### Time to start a 1-worker job (one step, TensorFlow already imported here)",
        "",
        f"Medians of {START_ROUNDS} interleaved runs each.",
        "",
        "| backend | `distcb.run` call → first step | whole job |",
        "|---|---|---|",
        f"| thread | {thread_first * 1e3:.0f} ms | {median(start['thread']['job']) * 1e3:.0f} ms |",
        f"| process | {process_first * 1e3:.0f} ms | "
        f"{median(start['process']['job']) * 1e3:.0f} ms |",
        "",
        f"The thread backend reaches its first step **{process_first / thread_first:.0f}×** "
        "sooner: no process to start and no second `import tensorflow` (the process backend's "
        "worker imports it again).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
