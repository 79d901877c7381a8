"""A deterministic distcb job for the exact-resume tests: Keras 3 replicas, seeded, with op
determinism, EarlyStopping(restore_best_weights), ReduceLROnPlateau, ModelCheckpoint
(save_best_only), CSVLogger and TensorBoard (epoch and batch scalars) on the coordinator.

    python -m tests.helpers.resume_job RUN_DIR [--faults JSON] [--max-restarts N] [--resume]
        [--epochs N]

runs the job with `distcb.run` and prints one JSON line (``RESULT {...}``) with what the
tests compare. Faults (a JSON list) fire once each, in whichever attempt reaches them
first: ``{"name": ..., "rank": r, "epoch": e, "batch": b, "signal": "KILL" | "TERM" |
"RAISE"}``; the worker of that rank sends itself the signal (or raises) from
``on_train_batch_begin(b)`` of epoch e (a marker file in RUN_DIR/faults makes it fire once).
A fault with ``"at": "before_done"`` (and epoch/batch -1) fires after the train-end reply,
before the worker says it is done. A fault with ``"after_file": PATH`` waits, when it is
reached, until PATH exists (a test does something first: tests/launch/test_warm_spares.py).

Every worker process writes RUN_DIR/pid-RANK-PID, holding JSON: whether Keras was imported
before the training function began (``warm``: a warm spare ran it) and whether TensorFlow's
eager context was already initialized then (it must not be).

With ``DISTCB_CHAOS`` set (tests/helpers/chaos.py), every process of the job appends what it
is doing to an events file, and may hold one phase open for a while, so that a SIGKILL from
outside can land inside it (see `tests.helpers.chaos_hooks`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np

EPOCHS = 20
SAMPLES = 64
BATCH = 16
SEED = 1234
FAST = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 4.0, "stop_timeout_s": 20.0}


def digest(arrays: Any) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(np.asarray(array)).tobytes())
    return h.hexdigest()


def data(rank: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = ((x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + 1.0 * rng.normal(size=n)) > 0).astype("float32")
    return x, y


def note(run_dir: str, event: str) -> None:
    """Append a timestamped event to RUN_DIR/timeline.jsonl (bench/bench_resume.py)."""
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid()})
    with open(os.path.join(run_dir, "timeline.jsonl"), "a") as handle:
        handle.write(line + "\n")


def read_timeline(run_dir: str) -> dict[str, list[float]]:
    events: dict[str, list[float]] = {}
    with open(os.path.join(run_dir, "timeline.jsonl")) as handle:
        for line in handle:
            item = json.loads(line)
            events.setdefault(item["event"], []).append(item["time"])
    return events


def train(
    run_dir: str, faults: list[dict[str, Any]], timeline: bool = False, epochs: int = EPOCHS
) -> None:
    """The worker: a Keras 3 replica of the job (module level: picklable)."""
    if timeline:
        note(run_dir, "process")
    warm = "keras" in sys.modules  # a warm spare imported it before it was given its rank
    context_initialized = _tf_context_initialized()
    import keras
    import tensorflow as tf

    import distcb
    import distcb.keras

    tf.config.experimental.enable_op_determinism()
    ctx = distcb.worker_context()
    with open(os.path.join(run_dir, f"pid-{ctx.rank}-{os.getpid()}"), "w") as handle:
        json.dump({"warm": warm, "tf_context_initialized": context_initialized}, handle)
    if timeline:
        note(run_dir, "imported")
    keras.utils.set_random_seed(SEED)
    x, y = data(ctx.rank, SAMPLES)
    vx, vy = data(ctx.rank + 50, SAMPLES // 2)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    if timeline:
        note(run_dir, "model")
    mine = [f for f in faults if f["rank"] == ctx.rank]
    from tests.helpers import chaos_hooks

    chaos = chaos_hooks.install_worker(ctx.rank)

    class Faults(keras.callbacks.Callback):
        first_step = True

        def on_train_begin(self, logs: Any = None) -> None:
            if timeline:  # the worker callback (join, backup) comes after this one
                note(run_dir, "fit")

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if timeline and self.first_step:
                self.first_step = False
                note(run_dir, "first_step")
            for fault in mine:
                if (fault["epoch"], fault["batch"]) != (self.epoch, batch):
                    continue
                marker = os.path.join(run_dir, "faults", fault["name"])
                os.makedirs(os.path.dirname(marker), exist_ok=True)
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue  # fired in an earlier attempt
                _wait_for(fault.get("after_file"))
                if fault["signal"] == "RAISE":
                    raise RuntimeError(f"a bug at epoch {self.epoch}")
                if timeline:
                    note(run_dir, "kill")
                os.kill(os.getpid(), getattr(signal, f"SIG{fault['signal']}"))

    worker = distcb.keras.WorkerCallback(
        samples=len(x), val_samples=len(vx), batch_size=BATCH, seed=SEED
    )
    for fault in mine:
        if fault.get("at") == "before_done":  # after the train-end reply, before `Done`
            worker.report = _fault_before_done(run_dir, fault, worker.report)  # type: ignore[method-assign]
    model.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=epochs,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[Faults(), *chaos.before(), worker, *chaos.after()],
    )
    report = {"weights": digest(model.get_weights()), "resumed_after": worker.resumed_after}
    with open(os.path.join(run_dir, f"report-{ctx.rank}.json"), "w") as handle:
        json.dump(report, handle)


def _tf_context_initialized() -> bool | None:
    """Whether TensorFlow's eager runtime started already (None: TensorFlow not imported)."""
    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.eager import context

    return bool(context.context()._initialized)


def _wait_for(path: str | None, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while path is not None and not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s} s")
        time.sleep(0.02)


def _fault_before_done(run_dir: str, fault: dict[str, Any], report: Any) -> Any:
    """`report` (which the worker callback calls between the train-end reply and its
    `Done`), sending this process `fault`'s signal first, once per run directory."""

    def fire_then_report() -> Any:
        marker = os.path.join(run_dir, "faults", fault["name"])
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return report()
        os.kill(os.getpid(), getattr(signal, f"SIG{fault['signal']}"))
        return report()

    return fire_then_report


def callbacks(run_dir: str, epochs: int = EPOCHS) -> list[Any]:
    from distcb.callbacks import (
        CSVLogger,
        EarlyStopping,
        ModelCheckpoint,
        ReduceLROnPlateau,
        TensorBoard,
    )

    # Scalars per epoch and per step (train/, validation/): compared as TensorBoard reads
    # them back (tests/helpers/tensorboard_scalars.py).
    tensorboard = TensorBoard(os.path.join(run_dir, "tb"), update_freq="batch", write_graph=False)

    if epochs < EPOCHS:  # the chaos job: fewer epochs, so a stop and LR cuts come sooner
        return [
            ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_delta=0.04),
            EarlyStopping(
                monitor="val_loss", patience=2, min_delta=0.04, restore_best_weights=True
            ),
            ModelCheckpoint(
                os.path.join(run_dir, "best.weights.h5"),
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
            ),
            CSVLogger(os.path.join(run_dir, "log.csv")),
            tensorboard,
        ]

    return [
        ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_delta=0.01),
        EarlyStopping(monitor="val_loss", patience=3, min_delta=0.01, restore_best_weights=True),
        ModelCheckpoint(
            os.path.join(run_dir, "best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        CSVLogger(os.path.join(run_dir, "log.csv")),
        tensorboard,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--faults", default="[]")
    parser.add_argument("--max-restarts", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--warm-spares", type=int, default=None)
    options = parser.parse_args(argv)
    import distcb
    from tests.helpers import chaos_hooks

    chaos_hooks.install_coordinator()

    run_dir = os.path.abspath(options.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    chain = callbacks(run_dir, options.epochs)
    history = distcb.run(
        train,
        num_workers=2,
        args=(run_dir, json.loads(options.faults), False, options.epochs),
        callbacks=chain,
        run_dir=run_dir,
        max_restarts=options.max_restarts,
        resume=options.resume,
        config=distcb.Config(**FAST),
        warm_spares=options.warm_spares,
    )
    result = {
        "epochs": history.epoch,
        "history": history.history,
        "decisions": [
            [d["kind"], d["at"], d.get("made_by")] for d in getattr(history, "decisions", [])
        ],
        "stopped_epoch": chain[1].stopped_epoch,
        "best_epoch": chain[1].best_epoch,
        "reports": {str(r): rep for r, rep in history.worker_reports.items()},
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
