"""Exact resume: what a restart costs, and what journaling and backups cost per epoch.

    python bench/bench_resume.py [--repeats 5] [--quick]

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
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.began)

    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch,
        shuffle=False,
        verbose=0,
        callbacks=[Clock(), distcb.keras.WorkerCallback(samples=len(x))],
    )
    with open(os.path.join(run_dir, f"times-{ctx.rank}.json"), "w") as handle:
        json.dump(times, handle)


def steady_once(big: bool, resumable: bool, epochs: int, every: int) -> float:
    """Median ms per epoch (after the first two) of the chief, in one job."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats")
    options = parser.parse_args()
    repeats = 2 if options.quick else options.repeats
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results: dict[str, Any] = {"load_average": os.getloadavg()}

    recoveries = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="distcb-bench-recovery-") as run_dir:
            recoveries.append(recovery_once(run_dir))
    results["recovery"] = {
        key: [r[key] for r in recoveries]
        for key in ("detection_s", "restart_s", "restore_s", "total_s")
    }
    print(json.dumps(results["recovery"]), flush=True)

    cases = {
        "moons": (False, 40 if not options.quick else 10),
        "10M": (True, 12 if not options.quick else 5),
    }
    steady: dict[str, dict[str, list[float]]] = {}
    for name, (big, epochs) in cases.items():
        runs: dict[str, list[float]] = {"off": [], "every 1": [], "every 5": []}
        for _ in range(repeats):  # interleaved: each repeat runs all three
            runs["off"].append(steady_once(big, False, epochs, 1))
            runs["every 1"].append(steady_once(big, True, epochs, 1))
            runs["every 5"].append(steady_once(big, True, epochs, 5))
        steady[name] = runs
        print(name, json.dumps(runs), flush=True)
    results["steady"] = steady
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
