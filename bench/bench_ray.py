"""Benchmark: the Ray backend's per-step overhead and epoch barrier, beside the naive way.

1. Per-step overhead: the anchor's small MLP (naive_callback_overhead.py: ~1 ms
   steps, batch 64, 1200 steps per fit) in the worker actor of a
   ``distcb.run(backend="ray")`` job. The worker times, in the same process:
   plain ``fit``; ``fit`` with ``WorkerCallback`` over the Ray transport, the
   coordinator actor running a callback with batch hooks (every batch streams,
   the window rule is on) or only an epoch-level one; and the naive approach,
   a callback calling a Ray actor from every ``on_train_batch_end`` (``ray.get``
   of each call, and fire-and-forget). Several jobs; medians of per-step times, ratios to plain.
   Also counted: the actor calls the distcb worker made per step.
2. Epoch barrier: scripted workers (no batches) against a coordinator actor
   over the Ray transport, the time from the last worker's epoch end to its
   reply; the same over websockets on loopback, and a bare Ray actor round trip
   (the floor any actor-based barrier pays), all in one run.

Standalone: ``python bench/bench_ray.py`` prints the Markdown section.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SummaryRow, load_line, spread, summary, verdict  # noqa: E402

STEP_JOBS = 5  # jobs per coordinator setup (batch hooks on / epoch hooks only)
STEPS_PER_FIT = 1200  # 3 epochs of 400 steps, batch 64 (the anchor's run)
BARRIER_EPOCHS = 200
BARRIER_WORKERS = 2
RTT_CALLS = 300


# --------------------------------------------------------------------------- 1. per step


class _Sink:
    """The naive callback's actor: receives one call per training batch."""

    def __init__(self) -> None:
        self.calls = 0

    def push(self, logs: dict[str, float]) -> None:
        self.calls += 1

    def count(self) -> int:
        return self.calls


def step_worker(direct: bool = True) -> None:
    """Runs in the distcb worker actor: times plain, naive and distcb fits (`direct`: the
    websocket straight to the coordinator actor, else actor calls)."""
    import keras
    import numpy as np
    import ray

    import distcb
    import distcb.keras
    from distcb.transport.ray import connect

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
    sink = ray.remote(num_cpus=0)(_Sink).remote()
    ray.get(sink.count.remote())

    class NaiveSync(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            ray.get(sink.push.remote({k: float(v) for k, v in (logs or {}).items()}))

    class NaiveAsync(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            sink.push.remote({k: float(v) for k, v in (logs or {}).items()})

    kept: dict[str, Any] = {}

    async def connect_and_keep() -> Any:
        kept["connection"] = await connect(
            context.address or "", context.token or "", config=context.config, direct=direct
        )
        return kept["connection"]

    def timed(callbacks: list[Any]) -> float:
        started = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=callbacks)
        return (time.perf_counter() - started) / STEPS_PER_FIT * 1e6

    # Plain fits around each of the others: a fit's ratio is over the two around it.
    results: dict[str, Any] = {"plain": [timed([])], "naive_sync": [timed([NaiveSync()])]}
    results["plain"].append(timed([]))
    results["naive_async"] = [timed([NaiveAsync()])]
    ray.get(sink.count.remote())  # drain the fire-and-forget calls before the next fit
    results["plain"].append(timed([]))
    worker = distcb.keras.WorkerCallback(samples=len(x), batch_size=64, connect=connect_and_keep)
    results["distcb"] = [timed([worker])]
    results["plain"].append(timed([]))
    plain = results["plain"]
    results["ratio_naive_sync"] = [results["naive_sync"][0] * 2 / (plain[0] + plain[1])]
    results["ratio_naive_async"] = [results["naive_async"][0] * 2 / (plain[1] + plain[2])]
    results["ratio_distcb"] = [results["distcb"][0] * 2 / (plain[2] + plain[3])]
    statistics = getattr(kept["connection"], "statistics", None)
    # The direct channel makes one actor call per fit (the websocket's address).
    results["calls"] = (
        statistics() if statistics is not None else {"pushes": 0, "polls": 0, "direct": 1}
    )
    ray.kill(sink)
    with open(os.path.join(context.run_dir or ".", "steps.json"), "w") as handle:
        json.dump(results, handle)


def bench_steps(
    jobs: int = STEP_JOBS,
) -> tuple[dict[str, list[float]], dict[str, list[dict[str, int]]]]:
    import distcb
    from distcb.callbacks import Callback

    class BatchLosses(Callback):
        """Has a batch hook and may decide there: every batch streams, the window rule is on."""

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.last = (logs or {}).get("loss")

    class EpochLosses(Callback):
        """Epoch hooks only (EarlyStopping-like): workers send no batch logs."""

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.last = (logs or {}).get("loss")

    merged: dict[str, list[float]] = {}
    calls: dict[str, list[dict[str, int]]] = {"batch": [], "batch_calls": []}
    for _ in range(jobs):
        for mode, callback, direct in (
            ("batch", BatchLosses(), True),
            ("batch_calls", BatchLosses(), False),
            ("epoch", EpochLosses(), True),
        ):
            with tempfile.TemporaryDirectory() as run_dir:
                distcb.run(
                    step_worker,
                    num_workers=1,
                    backend="ray",
                    args=(direct,),
                    callbacks=[callback],
                    run_dir=run_dir,
                    cpus_per_worker=1,
                )
                with open(os.path.join(run_dir, "steps.json")) as handle:
                    data = json.load(handle)
            made = data.pop("calls")
            if mode in calls:
                calls[mode].append(made)
            data[f"distcb_{mode}"] = data.pop("distcb")
            data[f"ratio_distcb_{mode}"] = data.pop("ratio_distcb")
            for key, values in data.items():
                merged.setdefault(key, []).extend(values)
    return merged, calls


# --------------------------------------------------------------------------- 2. barrier


def _timed_worker_class(waits: dict[int, list[float]]) -> Any:
    """ScriptedWorker whose sessions record each epoch end's wait for the reply."""
    from distcb.testing import ScriptedWorker
    from distcb.worker.session import WorkerSession

    class TimedSession(WorkerSession):
        async def end_epoch(self, message: Any) -> Any:
            started = time.perf_counter()
            decisions = await super().end_epoch(message)
            waits.setdefault(message.epoch, []).append(time.perf_counter() - started)
            return decisions

    class TimedWorker(ScriptedWorker):
        async def run(self, connection: Any) -> None:
            import distcb.testing.scripted

            distcb.testing.scripted.WorkerSession = TimedSession  # type: ignore[misc]
            try:
                await super().run(connection)
            finally:
                distcb.testing.scripted.WorkerSession = WorkerSession  # type: ignore[misc]

    return TimedWorker


def _last_arrivals(waits: dict[int, list[float]]) -> list[float]:
    # The last worker to arrive waits only for the coordinator: its wait is the round trip.
    return [min(per_worker) for _, per_worker in sorted(waits.items())][10:]


async def _barrier_ray(num_workers: int, direct: bool) -> list[float]:
    import ray

    from distcb.launch.ray_actor import RayCoordinator
    from distcb.protocol.config import Config
    from distcb.transport.ray import connect

    waits: dict[int, list[float]] = {}
    config = Config(heartbeat_interval_s=0.5)
    name = f"distcb-coordinator-bench-{secrets.token_hex(4)}"
    actor = RayCoordinator.options(name=name, num_cpus=0).remote(
        [], world_size=num_workers, config=config.to_dict(), token="bench"
    )
    try:
        run = asyncio.ensure_future(actor.run.remote())
        logs = [{"loss": 1.0, "val_loss": 1.0}] * BARRIER_EPOCHS
        connections = [
            await connect(f"ray:{name}", "bench", config=config, direct=direct)
            for _ in range(num_workers)
        ]
        worker_class = _timed_worker_class(waits)
        workers = [worker_class(r, num_workers, logs) for r in range(num_workers)]
        tasks = [asyncio.ensure_future(w.run(c)) for w, c in zip(workers, connections, strict=True)]
        await run
        await asyncio.gather(*tasks)
        for connection in connections:
            await connection.close()
    finally:
        ray.kill(actor)
    return _last_arrivals(waits)


async def _barrier_websocket(num_workers: int) -> list[float]:
    from distcb.coordinator.engine import Coordinator
    from distcb.protocol.config import Config
    from distcb.server import WebSocketServer
    from distcb.transport.websocket import connect

    waits: dict[int, list[float]] = {}
    config = Config(heartbeat_interval_s=0.5)
    coordinator = Coordinator([], world_size=num_workers, config=config)
    logs = [{"loss": 1.0, "val_loss": 1.0}] * BARRIER_EPOCHS
    async with WebSocketServer(coordinator, config=config) as server:
        connections = [
            await connect(server.address, server.token, config=config) for _ in range(num_workers)
        ]
        worker_class = _timed_worker_class(waits)
        workers = [worker_class(r, num_workers, logs) for r in range(num_workers)]
        tasks = [asyncio.ensure_future(w.run(c)) for w, c in zip(workers, connections, strict=True)]
        await coordinator.run()
        await asyncio.gather(*tasks)
        for connection in connections:
            await connection.close()
    return _last_arrivals(waits)


async def _actor_round_trips() -> list[float]:
    import ray

    from distcb.launch.ray_actor import RayCoordinator

    actor = RayCoordinator.options(num_cpus=0).remote([], world_size=1)
    try:
        await actor.ping.remote()
        times = []
        for _ in range(RTT_CALLS):
            started = time.perf_counter()
            await actor.ping.remote()
            times.append(time.perf_counter() - started)
        return times[20:]
    finally:
        ray.kill(actor)


# --------------------------------------------------------------------------- report


def _median_us(values: list[float]) -> float:
    return statistics.median(values)


def main(quick: bool = False) -> str:
    jobs = 1 if quick else STEP_JOBS
    import ray
    from ray import cloudpickle

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    # This module is not importable in Ray's worker processes: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        steps, calls = bench_steps(jobs)
        barrier_ray = asyncio.run(_barrier_ray(BARRIER_WORKERS, True))
        barrier_calls = asyncio.run(_barrier_ray(BARRIER_WORKERS, False))
        barrier_ws = asyncio.run(_barrier_websocket(BARRIER_WORKERS))
        rtt = asyncio.run(_actor_round_trips())
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if started_ray:
            ray.shutdown()

    rows = [
        ("plain `fit`, no callback", "plain", None),
        (
            "distcb `WorkerCallback`, Ray transport, epoch-level callbacks",
            "distcb_epoch",
            "ratio_distcb_epoch",
        ),
        (
            "distcb `WorkerCallback`, Ray transport, a callback with batch hooks (direct "
            "websocket to the coordinator actor, the default)",
            "distcb_batch",
            "ratio_distcb_batch",
        ),
        (
            "the same through actor calls only (`connect(..., direct=False)`, the fallback)",
            "distcb_batch_calls",
            "ratio_distcb_batch_calls",
        ),
        ("naive: `ray.get(actor.push.remote(logs))` every batch", "naive_sync", "ratio_naive_sync"),
        (
            "naive: `actor.push.remote(logs)` every batch, not awaited",
            "naive_async",
            "ratio_naive_async",
        ),
    ]

    def per_step(mode: str) -> tuple[float, float, float]:
        made = calls[mode]
        total = STEPS_PER_FIT * len(made)
        pushes = sum(c["pushes"] for c in made) / total
        polls = sum(c["polls"] for c in made) / total
        others = sum(c.get("direct", 0) for c in made) / total
        return pushes, polls, pushes + polls + others

    pushes, polls, fallback_per_step = per_step("batch_calls")
    calls_per_step = per_step("batch")[2]
    batch_ratios = steps["ratio_distcb_batch"]
    lines = [
        "## Ray backend (bench/bench_ray.py)",
        "",
        f"`python bench/bench_ray.py` (also run by `make bench`). {load_line()}",
        "",
        "Per-step time of the anchor's MLP (batch 64, "
        f"{STEPS_PER_FIT} steps per fit) inside a Ray worker actor, {jobs} jobs per "
        "coordinator setup; in each job the fits are interleaved with plain fits, and a "
        "fit's ratio is over the mean of the two plain fits around it. With a batch-hook "
        "callback on the coordinator every batch streams to it and the window rule is on "
        "(the worst case); epoch-level callbacks (EarlyStopping, ModelCheckpoint...) need "
        "no batch logs.",
        "",
        "| configuration | µs/step (median) | × plain, min–**median**–max over jobs |",
        "|---|---:|---|",
    ]
    for label, key, ratio_key in rows:
        value = _median_us(steps[key])
        ratio = "1.00" if ratio_key is None else spread(steps[ratio_key])
        lines.append(f"| {label} | {value:.0f} | {ratio} |")
    lines += [
        "",
        "Actor calls per training step made by the distcb worker with batch hooks on: "
        f"{calls_per_step:.4f} over the direct websocket (one call per fit, for the "
        f"websocket's address); {fallback_per_step:.3f} through actor calls ({pushes:.3f} "
        f"pushes of paced batch logs, {polls:.3f} long polls, each ended by a message "
        "from the coordinator); the naive callbacks: 1.",
        "",
        f"Epoch barrier, {BARRIER_WORKERS} scripted workers, {BARRIER_EPOCHS} epochs, time from "
        "the last worker's epoch end to its reply (median, ms):",
        "",
        "| transport | ms | × websocket |",
        "|---|---:|---:|",
        f"| Ray backend, direct websocket to the coordinator actor "
        f"| {statistics.median(barrier_ray) * 1e3:.2f} | "
        f"{statistics.median(barrier_ray) / statistics.median(barrier_ws):.1f} |",
        f"| Ray backend, actor calls (push + long poll) "
        f"| {statistics.median(barrier_calls) * 1e3:.2f} | "
        f"{statistics.median(barrier_calls) / statistics.median(barrier_ws):.1f} |",
        f"| websocket on loopback | {statistics.median(barrier_ws) * 1e3:.2f} | 1.0 |",
        f"| bare Ray actor round trip (floor) | {statistics.median(rtt) * 1e3:.2f} | "
        f"{statistics.median(rtt) / statistics.median(barrier_ws):.1f} |",
        "",
    ]
    summary(
        SummaryRow(
            "Ray backend, batch hooks on",
            "1.53× (0.132 actor calls per step)",
            f"{spread(batch_ratios)} over the direct websocket ({calls_per_step:.4f} actor "
            f"calls per step); {spread(steps['ratio_distcb_batch_calls'])} through actor calls "
            f"({fallback_per_step:.3f} per step)",
            "≤ 1.15×",
            verdict(batch_ratios, 1.15),
            "`python bench/bench_ray.py`",
        )
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main("--quick" in sys.argv[1:]))
