"""Exact resume: what a restart costs, and what journaling and backups cost per epoch.

    python bench/bench_resume.py [--repeats 5] [--quick]

    python bench/bench_resume.py --recovery-only [--recovery-repeats 5]

1. Recovery time on the process backend: the deterministic job of
   tests/helpers/resume_job.py, one worker SIGKILLed mid-epoch, max_restarts=1, with cold
   restarts and with warm spares (issue 24), interleaved. From the kill to the first
   training step after the restore, in parts: detection (the kill to the coordinator's
   restart decision), restart (to the new worker processes' first line of the training
   function), restore (to their first training step, the backup loaded and the job
   joined); min / median / max over the jobs, and where the time after the decision goes.
2. Steady-state cost: ms per epoch with a journal and a backup at every barrier against
   the same job without, measured in one job each, interleaved, for the seed's moons
   model (2 Keras 3 replicas) and a model of 8.2M parameters; and with backups
   every 5 epochs. The 8.2M model once more with one worker on one TensorFlow thread,
   so that a core is left for the backup writer (as on a GPU node, where training does
   not take every core): what the persist costs when it has a core, against what it
   costs when training already uses every one.

    python bench/bench_resume.py --cases 10M 10M-free-core   # some steady-state cases only
    python bench/bench_resume.py --persist-cpu   # one backup's CPU, part by part
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
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
    """Records when the coordinator decided to restart, when the old workers were stopped
    and the new ones started (the launcher's debug records), and opens the fault's gate
    once `spares` warm spares are ready (at once without spares)."""

    def __init__(self, gate: str, spares: int) -> None:
        super().__init__(logging.DEBUG)
        self.gate = gate
        self.spares = spares
        self.ready = 0
        self.times: dict[str, float] = {}
        if not spares:
            open(gate, "w").close()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "the job goes on from its last committed barrier" in message:
            self.times.setdefault("restart", record.created)
        elif "stopped in" in message and "restart" in self.times:
            self.times.setdefault("stopped", record.created)
        elif message.startswith("distcb: attempt") and "restart" in self.times:
            self.times.setdefault("started", record.created)
        elif "warm spare for rank" in message and message.split()[-3] == "ready":
            self.ready += 1
            if self.ready == self.spares:  # the kill waits for the gate (resume_job.py)
                open(self.gate, "w").close()


PHASES = ("detection_s", "restart_s", "restore_s", "total_s")
# Where the time after the restart decision goes (the launcher's and the worker's clocks).
PROFILE = (
    ("stop survivors", "restart", "stopped"),
    ("start or assign", "stopped", "started"),
    ("to train_fn", "started", "process"),
    ("import keras/TF", "process", "imported"),
    ("build model", "imported", "model"),
    ("to fit", "model", "fit"),
    ("join, load backup", "fit", "first_step"),
)


def recovery_once(run_dir: str, warm: bool = False) -> dict[str, float]:
    """One job, rank 1 SIGKILLed in epoch 4; with `warm`, the kill waits until both warm
    spares are ready (in a long job they are, long before a failure)."""
    import distcb
    from tests.helpers import resume_job

    timeline = _Timeline(os.path.join(run_dir, "gate"), 2 if warm else 0)
    loggers = [logging.getLogger("distcb.coordinator"), logging.getLogger("distcb.launch.process")]
    level = loggers[1].level
    loggers[1].setLevel(logging.DEBUG)
    for logger in loggers:
        logger.addHandler(timeline)
    fault = {
        "name": "k",
        "rank": 1,
        "epoch": 4,
        "batch": 2,
        "signal": "KILL",
        "after_file": timeline.gate,
    }
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
            warm_spares=2 if warm else 0,
        )
    finally:
        for logger in loggers:
            logger.removeHandler(timeline)
        loggers[1].setLevel(level)
    events = resume_job.read_timeline(run_dir)
    killed = events["kill"][0]
    times = dict(timeline.times, kill=killed)
    assert "restart" in times, "no restart decision was logged"
    times["process"] = min(t for t in events["process"] if t > killed)
    for name in ("imported", "model", "fit", "first_step"):
        times[name] = min(t for t in events[name] if t > times["process"])
    result = {
        "detection_s": times["restart"] - killed,
        "restart_s": times["process"] - times["restart"],
        "restore_s": times["first_step"] - times["process"],
        "total_s": times["first_step"] - killed,
    }
    for label, begin, end in PROFILE:
        if begin in times and end in times:
            result[label] = times[end] - times[begin]
    return result


def measure_recovery(repeats: int) -> dict[str, list[dict[str, float]]]:
    """Cold restarts and warm spares, interleaved (alternating which goes first)."""
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for index in range(repeats):
        order = ("warm", "cold") if index % 2 else ("cold", "warm")
        for kind in order:
            with tempfile.TemporaryDirectory(prefix="distcb-bench-recovery-") as run_dir:
                runs[kind].append(recovery_once(run_dir, warm=kind == "warm"))
            print("recovery", kind, json.dumps(runs[kind][-1]), flush=True)
    return runs


def recovery_markdown(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    def spread(kind: str, part: str) -> str:
        values = [r[part] for r in runs[kind] if part in r]
        if not values:
            return "-"
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    lines = [
        "| part | cold restart, s (min / median / max) | warm spares, s (min / median / max) |",
        "|---|---:|---:|",
    ]
    for part in PHASES:
        lines.append(f"| {part[:-2]} | {spread('cold', part)} | {spread('warm', part)} |")
    lines += [
        "",
        "Where the time after the restart decision goes (the launcher's debug records and "
        "the worker's timeline; min / median / max, s):",
        "",
        "| step | cold restart | warm spares |",
        "|---|---:|---:|",
    ]
    for label, _, _ in PROFILE:
        lines.append(f"| {label} | {spread('cold', label)} | {spread('warm', label)} |")
    return lines


# ----------------------------------------------------------------------------- persist CPU


def _big_model() -> Any:
    """The 8.2M-parameter model: 3 dense layers, compiled with Adam."""
    import keras

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
    return model


def persist_cpu(repeats: int = 5) -> list[str]:
    """What one backup of the 8.2M model costs in CPU, part by part (that thread's CPU
    time, `time.thread_time`): the writer's persist of a real capture
    (`CapturedKerasState.write`: hash, write, fsync), the SHA-256 of the same bytes alone,
    and a copy of them (what TensorFlow does on the training thread when its next update
    meets a captured buffer)."""
    import hashlib

    from distcb.keras.training_state import capture

    captured = capture(_big_model())  # weights and Adam's two moments (built by capture)
    arrays = [array for _, array in captured.arrays]
    parts: dict[str, list[tuple[float, float]]] = {"write": [], "sha256": [], "copy": []}

    def hash_all() -> str:
        digest = hashlib.sha256()
        for array in arrays:
            digest.update(array.data)
        return digest.hexdigest()

    def timed(name: str, fn: Any) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        parts[name].append(((time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3))

    with tempfile.TemporaryDirectory(prefix="distcb-bench-persist-") as root:
        for i in range(repeats):
            directory = os.path.join(root, str(i))
            os.mkdir(directory)
            timed("write", lambda directory=directory: captured.write(directory))
            shutil.rmtree(directory)
            timed("sha256", hash_all)
            timed("copy", lambda: [array.copy() for array in arrays])
    nbytes = captured.nbytes
    median = statistics.median
    lines = [
        "",
        f"### What one backup of the 8.2M model costs in CPU ({nbytes / 1e6:.0f} MB)",
        "",
        f"`python bench/bench_resume.py --persist-cpu`: medians of {repeats}, one thread, "
        f"nothing else of this benchmark running. Load average: {os.getloadavg()[0]:.2f}.",
        "",
        "| part | wall ms | CPU ms (that thread) |",
        "|---|---:|---:|",
    ]
    labels = {
        "write": "the writer's persist (`CapturedKerasState.write`: SHA-256, write, fsync)",
        "sha256": "of which the SHA-256",
        "copy": "a copy of the same bytes (TensorFlow's copy on the next update)",
    }
    for name, runs in parts.items():
        lines.append(
            f"| {labels[name]} | {median(w for w, _ in runs):.1f} | "
            f"{median(c for _, c in runs):.1f} |"
        )
    return lines


# ----------------------------------------------------------------------------- steady state


def _moons_train(epochs: int, run_dir: str, big: bool, one_thread: bool = False) -> None:
    """A Keras 3 replica: the seed's moons model, or one of 8.2M parameters; with
    `one_thread`, TensorFlow runs its ops on one thread (before it starts any)."""
    if one_thread:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
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
        model = _big_model()
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


@dataclasses.dataclass(frozen=True)
class SteadyCase:
    """One model and layout of the steady-state measure."""

    label: str
    big: bool
    epochs: int
    quick_epochs: int
    workers: int = 2
    one_thread: bool = False


STEADY_CASES = {
    "moons": SteadyCase("the seed's moons model (2k parameters)", False, 40, 10),
    "10M": SteadyCase("3 dense layers, 8.2M parameters", True, 12, 5),
    "10M-free-core": SteadyCase(
        "8.2M parameters, 1 worker on 1 TensorFlow thread (a core left for the writer)",
        True,
        12,
        5,
        workers=1,
        one_thread=True,
    ),
}


def steady_once(case: SteadyCase, resumable: bool, epochs: int, every: int) -> float:
    """Median ms per epoch (begin to next begin, after the first two) of the chief, in
    one job."""
    import distcb

    with tempfile.TemporaryDirectory(prefix="distcb-bench-resume-") as run_dir:
        distcb.run(
            _moons_train,
            num_workers=case.workers,
            args=(epochs, run_dir, case.big, case.one_thread),
            run_dir=run_dir,
            max_restarts=1 if resumable else 0,
            warm_spares=0,  # spares importing TensorFlow would take CPU from these epochs only
            config=distcb.Config(backup_every_epochs=every),
            output=open(os.devnull, "w"),  # noqa: SIM115
        )
        with open(os.path.join(run_dir, "times-0.json")) as handle:
            times = json.load(handle)
    return statistics.median(times[2:]) * 1e3


def measure(
    repeats: int,
    quick: bool,
    recovery_repeats: int = 5,
    recovery_only: bool = False,
    cases: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    load_before = os.getloadavg()
    recoveries = measure_recovery(recovery_repeats) if cases is None else None
    if recovery_only:
        return {
            "recovery": recoveries,
            "steady": None,
            "load": (load_before, os.getloadavg()),
            "repeats": recovery_repeats,
        }
    steady: dict[str, dict[str, list[float]]] = {}
    for name in cases or tuple(STEADY_CASES):
        case = STEADY_CASES[name]
        epochs = case.quick_epochs if quick else case.epochs
        runs: dict[str, list[float]] = {"off": [], "every 1": [], "every 5": []}
        for _ in range(repeats):  # interleaved: each repeat runs all three
            runs["off"].append(steady_once(case, False, epochs, 1))
            runs["every 1"].append(steady_once(case, True, epochs, 1))
            runs["every 5"].append(steady_once(case, True, epochs, 5))
        steady[name] = runs
        print(name, json.dumps(runs), flush=True)
    return {
        "recovery": recoveries,
        "steady": steady,
        "load": (load_before, os.getloadavg()),
        "repeats": recovery_repeats,
        "steady_repeats": repeats,
    }


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        "## Exact resume: recovery time and the cost of backups (issues 10 and 24)",
        "",
        f"Command: `{command}` (also run by `make bench`). Load average (1, 5, 15 min) "
        f"before / after: {[round(x, 2) for x in results['load'][0]]} / "
        f"{[round(x, 2) for x in results['load'][1]]}.",
    ]
    if results["recovery"] is not None:
        lines += _recovery_section(results)
    if results["steady"] is None:
        return "\n".join(lines) + "\n"
    lines += _steady_section(results)
    return "\n".join(lines) + "\n"


def _recovery_section(results: dict[str, Any]) -> list[str]:
    return [
        "",
        "### Recovery on the process backend",
        "",
        "The deterministic job of tests/helpers/resume_job.py (2 Keras 3 replicas), one "
        "worker SIGKILLed mid-epoch 4, `max_restarts=1`; cold restarts (`warm_spares=0`) "
        "and warm spares (`warm_spares=2`: the kill waits until both spares are ready) "
        f"interleaved, {results['repeats']} jobs each. Detection: the kill to the "
        "coordinator's restart decision; restart: to the new worker processes' first line "
        "of the training function; restore: to their first training step (Keras and "
        "TensorFlow imported, the model built, the job joined, the backup loaded).",
        "",
        *recovery_markdown(results["recovery"]),
    ]


def _steady_section(results: dict[str, Any]) -> list[str]:
    median = statistics.median
    lines = [
        "",
        "### Steady-state cost per epoch",
        "",
        "Keras 3 replicas (two, unless the row says otherwise); ms per epoch of the "
        "chief, from one epoch's begin to the next (the barrier and the backup's "
        "capture inside; the persist runs on the "
        "worker's backup writer thread during the next epoch), median over the epochs "
        "after the first two of one job; off / a journal and a backup at every barrier / "
        f"every 5 barriers, {results['steady_repeats']} jobs each, run interleaved. "
        "min / median / max over the jobs; the ratio is of the medians.",
        "",
        "| model | off ms | every 1 ms | every 5 ms | every 1 / off | every 5 / off |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def spread(values: list[float]) -> str:
        return f"{min(values):.1f} / **{median(values):.1f}** / {max(values):.1f}"

    for name, runs in results["steady"].items():
        off, one, five = (median(runs[k]) for k in ("off", "every 1", "every 5"))
        label = STEADY_CASES[name].label
        lines.append(
            f"| {label} | {spread(runs['off'])} | {spread(runs['every 1'])} | "
            f"{spread(runs['every 5'])} | {one / off:.2f} | {five / off:.2f} |"
        )
    return lines


def main(
    repeats: int = 5,
    quick: bool = False,
    recovery_repeats: int = 5,
    recovery_only: bool = False,
    cases: tuple[str, ...] | None = None,
) -> str:
    command = "python bench/bench_resume.py" + (f" --repeats {repeats}" if repeats != 5 else "")
    if recovery_repeats != 5:
        command += f" --recovery-repeats {recovery_repeats}"
    if recovery_only:
        command += " --recovery-only"
    if cases is not None:
        command += " --cases " + " ".join(cases)
    results = measure(repeats, quick, recovery_repeats, recovery_only, cases)
    text = markdown(results, command + (" --quick" if quick else ""))
    if results["steady"] is not None:
        text += "\n".join(persist_cpu()) + "\n"
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="steady-state jobs per case")
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument(
        "--recovery-repeats", type=int, default=5, help="jobs each, cold and warm (interleaved)"
    )
    parser.add_argument(
        "--recovery-only", action="store_true", help="only the recovery part (no steady state)"
    )
    parser.add_argument(
        "--persist-cpu",
        action="store_true",
        help="only what one backup of the 8.2M model costs in CPU, part by part",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=sorted(STEADY_CASES),
        help="only these steady-state cases (and no recovery part)",
    )
    options = parser.parse_args()
    if options.persist_cpu:
        print("\n".join(persist_cpu()))
        raise SystemExit(0)
    cases = tuple(options.cases) if options.cases else None
    print(
        main(options.repeats, options.quick, options.recovery_repeats, options.recovery_only, cases)
    )
