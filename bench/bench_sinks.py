"""Benchmark: does a RemoteMonitor whose server never answers slow the epoch barrier?

Runs a real Coordinator fed by scripted workers (``distcb.testing.asimulate``)
with and without a RemoteMonitor pointed at a loopback server that accepts
every request and never answers, and measures the epoch barrier: the time from
one ``on_epoch_end`` to the next (merge, hooks, reply to the workers, their next
epoch end; no batch logs), median over many epochs, configurations interleaved.
Then it measures what Keras's own RemoteMonitor does against the same server.

Standalone: ``python bench/bench_sinks.py`` prints the Markdown section.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aiohttp import web  # noqa: E402

from distcb.callbacks.base import Logs  # noqa: E402
from distcb.callbacks.remote_monitor import RemoteMonitor  # noqa: E402
from distcb.coordinator.engine import Coordinator  # noqa: E402
from distcb.protocol.config import Config  # noqa: E402
from distcb.testing import ScriptedWorker  # noqa: E402
from distcb.transport.memory import connection_pair  # noqa: E402

EPOCHS = 300
EPOCH_TRAINING_S = 0.002
WORKERS = 2
ROUNDS = 5
KERAS_BOUND_S = 2.0
CONFIG = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, sink_close_timeout_s=0.5)
_RELEASE = web.AppKey("release", asyncio.Event)


class _TimedRemoteMonitor(RemoteMonitor):
    """A RemoteMonitor that also records how long its hook takes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook_s: list[float] = []

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        start = time.perf_counter()
        super().on_epoch_end(epoch, logs)
        self.hook_s.append(time.perf_counter() - start)


async def _never_answer(request: web.Request) -> web.Response:
    await request.app[_RELEASE].wait()
    return web.Response(text="too late")


async def _start_server() -> tuple[web.AppRunner, str, asyncio.Event]:
    release = asyncio.Event()
    app = web.Application()
    app[_RELEASE] = release
    app.router.add_post("/{tail:.*}", _never_answer)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", release


def _logs() -> list[list[dict[str, float]]]:
    return [
        [{"loss": 1.0 / (e + 1) + r, "val_loss": 2.0 / (e + 1) + r} for r in range(WORKERS)]
        for e in range(EPOCHS)
    ]


class _TimedWorker(ScriptedWorker):
    """Records how long it waits for each epoch's reply (the epoch barrier it sees)."""

    waits: dict[int, list[float]]

    async def _train(self, session: Any, initial: int, first: int) -> None:
        end_epoch = session.end_epoch

        async def timed_end_epoch(message: Any) -> Any:
            started = time.perf_counter()
            decisions = await end_epoch(message)
            self.waits.setdefault(message.epoch, []).append(time.perf_counter() - started)
            # An epoch of training: real epochs last far longer than the sinks' work,
            # which runs after the reply and overlaps with it.
            await asyncio.sleep(EPOCH_TRAINING_S)
            return decisions

        session.end_epoch = timed_end_epoch
        await super()._train(session, initial, first)


async def _barriers(callbacks: list[Any]) -> list[float]:
    """The epoch barrier as the workers see it: from sending the epoch logs to the reply,
    for the last worker to arrive (the others also wait for it)."""
    waits: dict[int, list[float]] = {}
    logs = _logs()
    coordinator = Coordinator(callbacks, world_size=WORKERS, config=CONFIG)
    tasks = []
    for rank in range(WORKERS):
        worker = _TimedWorker(rank, WORKERS, [row[rank] for row in logs])
        worker.waits = waits
        coordinator_end, worker_end = connection_pair()
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(asyncio.create_task(worker.run(worker_end)))
    await coordinator.run()
    await asyncio.gather(*tasks)
    return [min(per_worker) for _, per_worker in sorted(waits.items())]


def _keras_blocks(url: str) -> str:
    try:
        import keras
    except ImportError:
        return "not measured (keras is not installed); FACTS.md: still blocked after 5 s."
    monitor = keras.callbacks.RemoteMonitor(root=url)
    thread = threading.Thread(
        target=monitor.on_epoch_end, args=(0, {"loss": 1.0}), daemon=True, name="keras-post"
    )
    start = time.perf_counter()
    thread.start()
    thread.join(KERAS_BOUND_S)
    if thread.is_alive():
        return (
            f"one `on_epoch_end` was **still blocked after {KERAS_BOUND_S:g} s** "
            "(a synchronous `requests.post` without a timeout on the training thread; "
            "FACTS.md saw the same after 5 s)."
        )
    return f"one `on_epoch_end` returned after {time.perf_counter() - start:.3f} s."


async def _measure() -> str:
    runner, url, release = await _start_server()
    # The drops and the close deadline below are expected: keep their warnings quiet.
    monitor_logger = logging.getLogger("distcb.callbacks.remote_monitor")
    level = monitor_logger.level
    monitor_logger.setLevel(logging.ERROR)
    try:
        plain: list[float] = []
        plain_again: list[float] = []
        hanging: list[float] = []
        hooks: list[float] = []
        stats = None
        for _ in range(ROUNDS):
            plain += await _barriers([])
            plain_again += await _barriers([])
            monitor = _TimedRemoteMonitor(root=url, timeout_s=60.0)
            hanging += await _barriers([monitor])
            hooks += monitor.hook_s
            stats = monitor.statistics()
        keras_line = await asyncio.to_thread(_keras_blocks, url)
    finally:
        monitor_logger.setLevel(level)
        release.set()
        await runner.cleanup()

    def ms(values: list[float], q: float = 0.5) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3:.3f} ms"

    ratio = statistics.median(hanging) / statistics.median(plain)
    noise = statistics.median(plain_again) / statistics.median(plain)
    return "\n".join(
        [
            "## Output sinks: RemoteMonitor against a server that never answers",
            "",
            f"Epoch barrier on a real Coordinator ({WORKERS} scripted workers over the "
            "in-process transport, no batch logs, each epoch's training simulated by a 2 ms wait), "
            "as the workers see it: from sending the "
            "epoch logs to receiving the decisions, for the last worker to arrive; "
            f"{ROUNDS} interleaved rounds of {EPOCHS} epochs per configuration. Command: "
            "`python bench/bench_sinks.py`.",
            "",
            "| configuration | median | p90 |",
            "|---|---|---|",
            f"| no RemoteMonitor | {ms(plain)} | {ms(plain, 0.9)} |",
            f"| no RemoteMonitor, again (noise) | {ms(plain_again)} | {ms(plain_again, 0.9)} |",
            f"| RemoteMonitor, server never answers | {ms(hanging)} | {ms(hanging, 0.9)} |",
            "",
            f"Ratio of medians (with / without): **{ratio:.2f}x**; the same configuration "
            f"measured twice differs by {noise:.2f}x. The hook itself "
            f"(encode + hand to the event loop): median "
            f"{statistics.median(hooks) * 1e6:.1f} µs. Last run's statistics: {stats} "
            "(one post held by the server, the queue of 64 dropping the oldest, the rest "
            "given up at the close deadline).",
            "",
            f"Keras 3 `keras.callbacks.RemoteMonitor` against the same server: {keras_line}",
            "",
        ]
    )


def main() -> str:
    """Run the benchmark; returns a Markdown section."""
    return asyncio.run(_measure())


if __name__ == "__main__":
    print(main())
