"""A long-lived worker process for the per-step benchmarks: one model, many fits.

Started by `bench/steps.py` as ``python bench/step_worker.py [--pin CPU] [--flavour keras3]``.
It reads one JSON command per line on stdin and answers one JSON line on stdout:

* ``{"kind": "plain"}``: `fit` with no callback;
* ``{"kind": "distcb", "address": ..., "token": ...}``: `fit` with a `WorkerCallback`
  joining the coordinator at `address` (the driver runs it);
* ``{"kind": "naive_http", "url": ...}``: an HTTP POST from every `on_train_batch_end`;
* ``{"kind": "quit"}``.

Every fit is the anchor's (naive_callback_overhead.py): an MLP 20-32-1, batch 64,
``EPOCHS`` epochs of 400 steps. The answer holds its wall and CPU time per step,
split by thread: the training thread, distcb's IO thread, Keras's batch-end pool
(Keras 3 runs batch-end hooks there), and the rest of the process (TensorFlow's
own native threads). Clocks run from the first step's begin to the train end
(epoch barriers included, the one-time join not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STEPS_PER_EPOCH = 400
BATCH = 64


def _thread_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live Python thread: ident -> (name, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            out[thread.ident] = (thread.name, time.clock_gettime(clock))
        except (OSError, ProcessLookupError):
            continue
    return out


def _timed(hook: Any, total_s: list[float]) -> Any:
    """`hook`, adding its wall time to ``total_s[0]``."""

    def timed(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        hook(*args, **kwargs)
        total_s[0] += time.perf_counter() - started

    return timed


def _group(name: str, training: str) -> str:
    if name == training:
        return "training"
    if name.startswith("distcb-worker-") and name.endswith("-io"):
        return "io"
    if name.startswith("ThreadPoolExecutor"):
        return "keras_pool"
    return "other_python"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pin", type=int, default=None, help="run on this CPU only")
    parser.add_argument("--epochs", type=int, default=3)
    options = parser.parse_args()
    if options.pin is not None:
        os.sched_setaffinity(0, {options.pin})  # one thread now: every later one inherits

    import keras
    import numpy as np
    import requests

    rng = np.random.default_rng(0)
    x = rng.random((BATCH * STEPS_PER_EPOCH, 20), dtype="float32")
    y = (x.sum(1) > 10).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[: BATCH * 20], y[: BATCH * 20], batch_size=BATCH, epochs=1, verbose=0)
    steps = options.epochs * STEPS_PER_EPOCH
    http = requests.Session()

    class NaivePost(keras.callbacks.Callback):
        def __init__(self, url: str):
            super().__init__()
            self.url = url

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            http.post(self.url, json={k: float(v) for k, v in (logs or {}).items()}, timeout=5)

    class Clock(keras.callbacks.Callback):
        """First in the list: its train end runs before the worker's stops the IO thread."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if not hasattr(self, "wall"):
                self.training = threading.current_thread().name
                self.threads = _thread_cpu_s()
                self.process = time.process_time()
                self.wall = time.perf_counter()

        def on_train_end(self, logs: Any = None) -> None:
            wall = time.perf_counter() - self.wall
            process = time.process_time() - self.process
            groups = {"training": 0.0, "io": 0.0, "keras_pool": 0.0, "other_python": 0.0}
            for ident, (name, seconds) in _thread_cpu_s().items():
                before = self.threads.get(ident, (name, 0.0))[1]
                groups[_group(name, self.training)] += seconds - before
            per_step = 1e6 / steps
            self.result = {
                "wall_us": wall * per_step,
                "cpu_us": process * per_step,
                **{f"{k}_us": v * per_step for k, v in groups.items()},
                "native_us": (process - sum(groups.values())) * per_step,
            }

    import distcb.keras

    def hooks_only(command: dict[str, Any]) -> dict[str, Any]:
        """The Keras hooks of a WorkerCallback driven in a loop, no training between them:
        what distcb itself costs the training thread per step (and its IO thread)."""
        count = int(command["steps"])
        worker = distcb.keras.WorkerCallback(
            command["address"],
            command["token"],
            rank=0,
            world_size=1,
            samples=count * BATCH,
            batch_size=BATCH,
            flavour="keras3",
        )
        worker.set_model(model)
        worker.set_params({"epochs": 1, "steps": count, "verbose": 0})
        worker.on_train_begin()
        worker.on_epoch_begin(0)
        io = [t for t in threading.enumerate() if t.name.endswith("-io")][0]
        io_clock = time.pthread_getcpuclockid(io.ident or 0)
        io_before = time.clock_gettime(io_clock)
        thread_before = time.thread_time()
        wall_before = time.perf_counter()
        for step in range(count):
            worker.on_train_batch_begin(step)
            logs = {"accuracy": 0.5 + step * 1e-6, "loss": 1.0 / (step + 1)}
            worker.on_train_batch_end(step, logs)
        thread = time.thread_time() - thread_before
        wall = time.perf_counter() - wall_before
        io_cpu = time.clock_gettime(io_clock) - io_before
        worker.on_epoch_end(0, {"loss": 0.5, "accuracy": 0.5})
        worker.on_train_end()
        return {
            "hooks_us": thread * 1e6 / count,
            "hooks_wall_us": wall * 1e6 / count,
            "io_us": io_cpu * 1e6 / count,
            "link": worker.link_statistics,
        }

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        kind = command["kind"]
        if kind == "quit":
            break
        if kind == "hooks":
            print(json.dumps(hooks_only(command)), flush=True)
            continue
        clock = Clock()
        callbacks: list[Any] = [clock]
        worker = None
        hooks_s = [0.0]
        if kind == "distcb":
            worker = distcb.keras.WorkerCallback(
                command["address"],
                command["token"],
                rank=0,
                world_size=1,
                samples=len(x),
                batch_size=BATCH,
                flavour="keras3",
            )
            callbacks.append(worker)
            # The hooks' wall time on the training thread, waits for the GIL included.
            for name in ("on_train_batch_begin", "on_train_batch_end"):
                setattr(worker, name, _timed(getattr(worker, name), hooks_s))
        elif kind == "naive_http":
            callbacks.append(NaivePost(command["url"]))
        model.fit(x, y, batch_size=BATCH, epochs=options.epochs, verbose=0, callbacks=callbacks)
        result = dict(clock.result)
        if worker is not None:
            result["link"] = worker.link_statistics
            result["hooks_wall_us"] = hooks_s[0] * 1e6 / steps
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
