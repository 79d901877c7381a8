"""Exact resume: what a restart costs, and what journaling and backups cost per epoch.

    python bench/bench_resume.py [--repeats 3] [--quick]

1. Recovery time on the process backend: the deterministic job of
   tests/helpers/resume_job.py, one worker SIGKILLed mid-epoch, max_restarts=1. From the
   kill to the first training step after the restore, in parts: detection (the kill to
   the coordinator's restart decision), restart (to the new worker processes' first
   line of Python), restore (to their first training step, the backup loaded and the
   job joined). Medians over the repeats.
2. Steady-state cost: ms per epoch with a journal and a backup at every barrier against
   the same job without, measured in one job each, interleaved, for the seed's moons
   model (2 Keras 3 replicas) and a model of about 10M parameters; and with backups
   every 5 epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# ----------------------------------------------------------------------------- recovery


class _Timeline(logging.Handler):
    """Records when the coordinator decided to restart."""

    def __init__(self) -> None:
        super().__init__()
        self.restart_s: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "the job goes on from its last committed barrier" in record.getMessage():
            self.restart_s = record.created if self.restart_s is None else self.restart_s


def recovery_once(run_dir: str) -> dict[str, float]:
    import distcb
    from tests.helpers import resume_job

    timeline = _Timeline()
    logging.getLogger("distcb.coordinator").addHandler(timeline)
    fault = {"name": "k", "rank": 1, "epoch": 4, "batch": 2, "signal": "KILL"}
    try:
        distcb.run(
            resume_job.train,
            num_workers=2,
            args=(run_dir, [fault], True),
            callbacks=resume_job.callbacks(run_dir),
            run_dir=run_dir,
            max_restarts=1,
            config=distcb.Config(**resume_job.FAST),
            output=open(os.devnull, "w"),  # noqa: SIM115
        )
    finally:
        logging.getLogger("distcb.coordinator").removeHandler(timeline)
    events = resume_job.read_timeline(run_dir)
    killed = events["kill"][0]
    assert timeline.restart_s is not None
    started = min(t for t in events["process"] if t > killed)
    first_step = min(t for t in events["first_step"] if t > started)
    return {
        "detection_s": timeline.restart_s - killed,
        "restart_s": started - timeline.restart_s,
        "restore_s": first_step - started,
        "total_s": first_step - killed,
    }


# ----------------------------------------------------------------------------- steady state


def _moons_train(epochs: int, run_dir: str, big: bool) -> None:
    """A Keras 3 replica: the seed's moons model, or one of about 10M parameters."""
    import keras
    import numpy as np

    import distcb
    import distcb.keras

    ctx = distcb.worker_context()
    keras.utils.set_random_seed(1)
    if big:
        rng = np.random.default_rng(ctx.rank)
        x = rng.normal(size=(256, 1000)).astype("float32")
        y = rng.integers(0, 10, size=256)
        model = keras.Sequential(
            [
                keras.Input((1000,)),
                keras.layers.Dense(2400, activation="relu"),
                keras.layers.Dense(2400, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        batch = 64
    else:
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        from moons_data import split

        x, y, _, _ = split()
        model = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(500, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(optimizer="adam", loss="binary_crossentropy")
        batch = len(x)
    begins: list[float] = []

    class Clock(keras.callbacks.Callback):
        # From one epoch's begin to the next: the barrier and the backup (carried out at
        # the epoch's end, in WorkerCallback.on_epoch_end) fall inside.
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            begins.append(time.perf_counter())

    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch,
        shuffle=False,
        verbose=0,
        callbacks=[Clock(), distcb.keras.WorkerCallback(samples=len(x))],
    )
    times = [b - a for a, b in zip(begins, begins[1:], strict=False)]
    with open(os.path.join(run_dir, f"times-{ctx.rank}.json"), "w") as handle:
        json.dump(times, handle)


def steady_once(big: bool, resumable: bool, epochs: int, every: int) -> float:
    """Median ms per epoch (begin to next begin, after the first two) of the chief, in
    one job."""
    import distcb

    with tempfile.TemporaryDirectory(prefix="distcb-bench-resume-") as run_dir:
        distcb.run(
            _moons_train,
            num_workers=2,
            args=(epochs, run_dir, big),
            run_dir=run_dir,
            max_restarts=1 if resumable else 0,
            config=distcb.Config(backup_every_epochs=every),
            output=open(os.devnull, "w"),  # noqa: SIM115
        )
        with open(os.path.join(run_dir, "times-0.json")) as handle:
            times = json.load(handle)
    return statistics.median(times[2:]) * 1e3


def measure(repeats: int, quick: bool) -> dict[str, Any]:
    load_before = os.getloadavg()
    recoveries = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="distcb-bench-recovery-") as run_dir:
            recoveries.append(recovery_once(run_dir))
    print("recovery", json.dumps(recoveries), flush=True)
    cases = {"moons": (False, 10 if quick else 40), "10M": (True, 5 if quick else 12)}
    steady: dict[str, dict[str, list[float]]] = {}
    for name, (big, epochs) in cases.items():
        runs: dict[str, list[float]] = {"off": [], "every 1": [], "every 5": []}
        for _ in range(repeats):  # interleaved: each repeat runs all three
            runs["off"].append(steady_once(big, False, epochs, 1))
            runs["every 1"].append(steady_once(big, True, epochs, 1))
            runs["every 5"].append(steady_once(big, True, epochs, 5))
        steady[name] = runs
        print(name, json.dumps(runs), flush=True)
    return {
        "recovery": recoveries,
        "steady": steady,
        "load": (load_before, os.getloadavg()),
        "repeats": repeats,
    }


def markdown(results: dict[str, Any], command: str) -> str:
    median = statistics.median
    parts = ("detection_s", "restart_s", "restore_s", "total_s")
    lines = [
        "## Exact resume: recovery time and the cost of journaling (issue 10)",
        "",
        f"Command: `{command}` (also run by `make bench`). Load average (1, 5, 15 min) "
        f"before / after: {[round(x, 2) for x in results['load'][0]]} / "
        f"{[round(x, 2) for x in results['load'][1]]}.",
        "",
        "### Recovery on the process backend",
        "",
        "The deterministic job of tests/helpers/resume_job.py (2 Keras 3 replicas), one "
        "worker SIGKILLed mid-epoch 4, `max_restarts=1`. Detection: the kill to the "
        "coordinator's restart decision; restart: to the new worker processes' first line "
        "of Python; restore: to their first training step (TensorFlow imported, the job "
        f"joined, the backup loaded). Medians of {results['repeats']} runs.",
        "",
        "| part | median s | per run |",
        "|---|---:|---|",
    ]
    for part in parts:
        values = [r[part] for r in results["recovery"]]
        shown = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {part[:-2]} | {median(values):.2f} | {shown} |")
    lines += [
        "",
        "### Steady-state cost per epoch",
        "",
        "Two Keras 3 replicas; ms per epoch of the chief, from one epoch's begin to the "
        "next (the barrier and the backup's capture inside; the persist runs on the "
        "worker's backup writer thread during the next epoch), median over the epochs "
        "after the first two of one job; off / a journal and a backup at every barrier / "
        f"every 5 barriers, {results['repeats']} jobs each, run interleaved. "
        "min / median / max over the jobs; the ratio is of the medians.",
        "",
        "| model | off ms | every 1 ms | every 5 ms | every 1 / off | every 5 / off |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def spread(values: list[float]) -> str:
        return f"{min(values):.1f} / **{median(values):.1f}** / {max(values):.1f}"

    for name, runs in results["steady"].items():
        off, one, five = (median(runs[k]) for k in ("off", "every 1", "every 5"))
        label = {
            "moons": "the seed's moons model (2k parameters)",
            "10M": "3 dense layers, 8.2M parameters",
        }.get(name, name)
        lines.append(
            f"| {label} | {spread(runs['off'])} | {spread(runs['every 1'])} | "
            f"{spread(runs['every 5'])} | {one / off:.2f} | {five / off:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(repeats: int = 3, quick: bool = False) -> str:
    command = "python bench/bench_resume.py" + (f" --repeats {repeats}" if repeats != 3 else "")
    return markdown(measure(repeats, quick), command + (" --quick" if quick else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    options = parser.parse_args()
    print(main(options.repeats, options.quick))
