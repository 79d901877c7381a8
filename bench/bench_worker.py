"""Benchmark: what a worker pays for distcb, and how fast the epoch barrier is.

1. Per-step overhead (issue 5): a small MLP (~1 ms steps, the anchor
   naive_callback_overhead.py's model and data) in one worker process of a
   ``distcb.run`` job. The worker times, in the same process and run:
   plain ``fit`` with no callback; ``fit`` with ``WorkerCallback`` streaming every
   batch to a coordinator whose LossHistory-style callback has batch hooks (so
   the window rule is on); and the naive approach, an HTTP POST to a loopback
   aiohttp server from every ``on_train_batch_end``. Jobs are repeated, the
   medians of per-step times compared.
2. Epoch barrier round trip over real websockets on loopback, with 2 and 8
   scripted workers: the time from the last worker's epoch end to its reply.
3. The seed's moons example with 1 worker against the same script in plain
   single-process Keras (the anchor seed_moons_keras.py), whole-process wall
   time, a fixed number of epochs.

Standalone: ``python bench/bench_worker.py`` prints the Markdown section.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

STEP_JOBS = 4
STEPS_PER_FIT = 1200  # 3 epochs of 400 steps, batch 64 (the anchor's run)
BARRIER_EPOCHS = 300
MOONS_EPOCHS = 300
MOONS_ROUNDS = 3


# --------------------------------------------------------------------------- 1. per step


def step_worker(post_url: str) -> None:
    """Runs in the distcb worker process: times plain, naive and distcb fits."""
    import keras
    import numpy as np
    import requests

    import distcb
    import distcb.keras

    context = distcb.worker_context()
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
    session = requests.Session()

    class NaivePost(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            session.post(post_url, json={k: float(v) for k, v in (logs or {}).items()}, timeout=5)

    class StepClock(keras.callbacks.Callback):
        """From the first step's begin to the last step's end: the steps, epoch barriers
        included, without the one-time join (connect, handshake) of on_train_begin."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if not hasattr(self, "started"):
                self.started = time.perf_counter()

        def on_train_end(self, logs: Any = None) -> None:
            self.ended = time.perf_counter()

    def timed(callbacks: list[Any]) -> float:
        clock = StepClock()
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[clock, *callbacks])
        return (clock.ended - clock.started) / STEPS_PER_FIT * 1e6

    # Plain fits around the others, so that drifts of this shared machine cancel.
    results = {"plain": [timed([])], "naive_http": [timed([NaivePost()])]}
    results["plain"].append(timed([]))
    worker = distcb.keras.WorkerCallback(samples=len(x), batch_size=64)
    results["distcb"] = [timed([worker])]
    results["link"] = worker.link_statistics  # type: ignore[assignment]
    results["plain"].append(timed([]))
    with open(os.path.join(context.run_dir or ".", "steps.json"), "w") as handle:
        json.dump(results, handle)


def _start_sink_server() -> tuple[str, Any]:
    from aiohttp import web

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = runner.addresses[0][1]
        holder["runner"] = runner
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    return f"http://127.0.0.1:{holder['port']}/", stop


def _coordinator_callbacks(kind: str) -> list[Any]:
    from distcb.callbacks import Callback, EarlyStopping

    class BatchLosses(Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.last = (logs or {}).get("loss")

    class BatchObserver(BatchLosses):
        decides_on_batch = False

    early = EarlyStopping(monitor="loss", patience=100)
    return {
        "epoch": [early],  # epoch-level callbacks only: no batch logs travel
        "stream": [early, BatchObserver()],  # every batch streamed, no window
        "window": [early, BatchLosses()],  # every batch streamed, window rule on
    }[kind]


STEP_KINDS = ("epoch", "stream", "window")


def bench_steps() -> dict[str, list[float]]:
    """Per job: the distcb fit's µs/step over the mean of the plain fits around it."""
    import distcb

    url, stop = _start_sink_server()
    ratios: dict[str, list[float]] = {kind: [] for kind in (*STEP_KINDS, "naive_http")}
    plain: list[float] = []
    waits: dict[str, list[float]] = {}
    try:
        for _ in range(STEP_JOBS):
            for kind in STEP_KINDS:
                with tempfile.TemporaryDirectory() as run_dir:
                    distcb.run(
                        step_worker,
                        num_workers=1,
                        args=(url,),
                        callbacks=_coordinator_callbacks(kind),
                        run_dir=run_dir,
                        threads_per_worker=1,
                    )
                    with open(os.path.join(run_dir, "steps.json")) as handle:
                        times = json.load(handle)
                baseline = statistics.mean(times["plain"])
                waits.setdefault(kind, []).append(times["link"]["window_waits"])
                plain.extend(times["plain"])
                ratios[kind].append(times["distcb"][0] / baseline)
                ratios["naive_http"].append(times["naive_http"][0] / baseline)
    finally:
        stop()
    ratios["plain_us"] = plain
    ratios["window_waits"] = waits.get("window", [])
    return ratios


# --------------------------------------------------------------------------- 2. barrier


async def _barrier(num_workers: int) -> list[float]:
    from distcb.coordinator.engine import Coordinator
    from distcb.protocol.config import Config
    from distcb.testing import ScriptedWorker
    from distcb.transport.websocket import WebSocketServer, connect

    waits: dict[int, list[float]] = {}

    class TimedWorker(ScriptedWorker):
        async def _wait_reply(self, key: str) -> Any:
            started = time.perf_counter()
            reply = await super()._wait_reply(key)
            if key.startswith("epoch_reply"):
                waits.setdefault(int(key.split(":")[1]), []).append(time.perf_counter() - started)
            return reply

    config = Config(heartbeat_interval_s=0.5)
    coordinator = Coordinator([], world_size=num_workers, config=config)
    logs = [{"loss": 1.0, "val_loss": 1.0}] * BARRIER_EPOCHS
    async with WebSocketServer(coordinator, config=config) as server:
        connections = [
            await connect(server.address, server.token, config=config) for _ in range(num_workers)
        ]
        workers = [TimedWorker(r, num_workers, logs) for r in range(num_workers)]
        tasks = [asyncio.create_task(w.run(c)) for w, c in zip(workers, connections, strict=True)]
        await coordinator.run()
        await asyncio.gather(*tasks)
        for connection in connections:
            await connection.close()
    # The last worker to arrive waits only for the coordinator: its wait is the round trip.
    return [min(per_worker) for _, per_worker in sorted(waits.items())][10:]


def bench_barrier(num_workers: int) -> list[float]:
    return asyncio.run(_barrier(num_workers))


# --------------------------------------------------------------------------- 3. moons


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, timeout=900)
    return time.perf_counter() - started


def bench_moons() -> dict[str, list[float]]:
    anchor = os.path.join(ROOT, "..", "shared", "anchors", "seed_moons_keras.py")
    ours = os.path.join(ROOT, "examples", "moons_replicas.py")
    out: dict[str, list[float]] = {"keras": [], "distcb": []}
    with tempfile.TemporaryDirectory() as run_dir:
        for _ in range(MOONS_ROUNDS):
            out["keras"].append(_wall([sys.executable, anchor, str(MOONS_EPOCHS)]))
            out["distcb"].append(
                _wall(
                    [
                        sys.executable,
                        ours,
                        "--workers",
                        "1",
                        "--epochs",
                        str(MOONS_EPOCHS),
                        "--patience",
                        str(MOONS_EPOCHS + 1),
                        "--run-dir",
                        run_dir,
                    ]
                )
            )
    return out


# --------------------------------------------------------------------------- report


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> str:
    steps = bench_steps()
    plain = statistics.median(steps["plain_us"])
    barrier = {n: bench_barrier(n) for n in (2, 8)}
    moons = bench_moons()
    keras_s, distcb_s = statistics.median(moons["keras"]), statistics.median(moons["distcb"])
    labels = {
        "epoch": "`WorkerCallback`, epoch-level coordinator callbacks (EarlyStopping)",
        "stream": "`WorkerCallback` streaming every batch to an observing batch hook",
        "window": "`WorkerCallback` streaming every batch, a deciding batch hook (window on)",
        "naive_http": "naive: HTTP POST from every `on_train_batch_end`",
    }
    lines = [
        "## Worker overhead, epoch barrier, moons (issue 5)",
        "",
        "Command: `python bench/bench_worker.py` (also run by `make bench`).",
        "",
        f"### Per-step cost, small MLP, batch 64, {STEPS_PER_FIT} steps per fit",
        "",
        "The anchor's model and data in one worker process of a `distcb.run` job, the "
        "coordinator in the launching process. Each job times plain fits before and after "
        "the others; the ratio is each fit's µs/step over the mean of those plain fits, "
        f"median over {STEP_JOBS} jobs per configuration. Steps are timed from the first "
        "step's begin to `on_train_end` (epoch barriers included, the one-time join not). "
        f"Plain `fit`: median {plain:.0f} µs/step.",
        "",
        "| fit | ratio to plain (median) | min–max over jobs |",
        "|---|---|---|",
    ]
    for kind, label in labels.items():
        values = steps[kind]
        lines.append(
            f"| {label} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} |"
        )
    lines += [
        "",
        "With the window rule on, the worker waited on it "
        f"{int(sum(steps['window_waits']))} times in {STEP_JOBS} runs of {STEPS_PER_FIT} "
        "steps (its link's statistics): the coordinator keeps ahead; what is left is the "
        "IO thread's and the coordinator's CPU on this 2-core machine.",
    ]
    lines += [
        "",
        "### Epoch barrier round trip over websockets on loopback (last worker's wait)",
        "",
        "Scripted workers and the coordinator in one process and one event loop (so with 8 "
        "workers the coordinator shares its loop with 8 clients).",
        "",
        "| workers | p50 µs | p99 µs |",
        "|---|---|---|",
    ]
    for n, waits in barrier.items():
        lines.append(f"| {n} | {_pct(waits, 0.5) * 1e6:.0f} | {_pct(waits, 0.99) * 1e6:.0f} |")
    lines += [
        "",
        f"### Moons, {MOONS_EPOCHS} epochs, whole process wall time, median of {MOONS_ROUNDS}",
        "",
        "| run | wall s | ratio |",
        "|---|---|---|",
        f"| plain Keras 3, single process, keras.callbacks (anchor) | {keras_s:.1f} | 1.00 |",
        f"| distcb, 1 worker (`examples/moons_replicas.py --workers 1`) | {distcb_s:.1f} | "
        f"{distcb_s / keras_s:.3f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
