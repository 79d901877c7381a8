"""Load generator: simulated workers in separate processes against a real coordinator.

Two roles, each its own process:

    python bench/loadgen.py coordinator --workers N --mode barrier|stream|deciding [--pin CPU]
    python bench/loadgen.py workers --address A --token T --world N --ranks 0:32 ...

The coordinator process runs a real `Coordinator` behind a real
`WebSocketServer` (as `distcb.run` does) and prints one JSON line with its
address, then, at the end, one with what it measured at every epoch end: its
process CPU time, wall time, merged steps and resident memory.

A workers process runs several workers on one event loop, each a real
`distcb.worker.session.WorkerSession` over a real websocket
(`distcb.transport.websocket_client.connect`) with a scripted target (the
model of `distcb.testing`): it joins, begins and ends steps as fast as the
protocol lets it (the window and flow bounds included), sends Keras-like batch
logs (``loss``, ``accuracy``) and epoch logs, waits at every epoch barrier and
applies the decisions. It prints one JSON line per rank: the monotonic time
at which it sent each epoch end and received each reply (CLOCK_MONOTONIC is
common to every process of the machine, so the driver can find the last
arrival of each barrier).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import time
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def _f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


# --------------------------------------------------------------------------- coordinator


async def coordinator_main(options: argparse.Namespace) -> None:
    from distcb.callbacks import Callback
    from distcb.coordinator.engine import Coordinator
    from distcb.protocol.config import Config

    try:
        from distcb.server import WebSocketServer
    except ImportError:  # a tree from before issue 22 (bench/bench_before_after.py runs one)
        from distcb.transport.websocket import WebSocketServer  # type: ignore[no-redef]

    samples: list[dict[str, float]] = []

    class Meter(Callback):
        """Epoch ends: CPU, wall, steps merged, memory (after the merge of that epoch)."""

        decides_on_batch = False

        def __init__(self, batch_hook: bool) -> None:
            super().__init__()
            self.steps = 0
            self.batch_hook = batch_hook

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            samples.append(
                {
                    "epoch": epoch,
                    "cpu_s": time.process_time(),
                    "wall_s": time.monotonic(),
                    "steps": self.steps,
                    "rss": rss_bytes(),
                }
            )

    class StreamMeter(Meter):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.steps += 1

    class DecidingMeter(StreamMeter):
        """May decide on batch ends (it never does): the window rule is on."""

        decides_on_batch = True

    meter = {"stream": StreamMeter, "deciding": DecidingMeter}.get(options.mode, Meter)(
        options.mode != "barrier"
    )
    config = Config(
        join_timeout_s=300, heartbeat_timeout_s=60, reply_timeout_s=120, connect_timeout_s=120
    )
    coordinator = Coordinator([meter], world_size=options.workers, config=config)
    async with WebSocketServer(coordinator, config=config) as server:
        print(json.dumps({"address": server.address, "token": server.token}), flush=True)
        started = time.process_time()
        await coordinator.run()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(
            json.dumps(
                {
                    "epochs": samples,
                    "cpu_s": time.process_time() - started,
                    "max_rss": usage.ru_maxrss * 1024,
                }
            ),
            flush=True,
        )


# --------------------------------------------------------------------------- workers


async def run_rank(rank: int, options: argparse.Namespace, out: dict[int, dict[str, Any]]) -> None:
    from distcb.protocol.config import Config
    from distcb.protocol.messages import EpochEnd, JoinParams
    from distcb.testing import ScriptedModel
    from distcb.transport.websocket_client import connect
    from distcb.worker.session import WorkerSession

    config = Config(
        join_timeout_s=300, heartbeat_timeout_s=60, reply_timeout_s=120, connect_timeout_s=120
    )

    async def connector() -> Any:
        return await connect(options.address, options.token, config=config)

    model = ScriptedModel()
    session = WorkerSession(
        rank=rank, world_size=options.world, connect=connector, config=config, target=model
    )
    steps = options.steps
    sent: list[float] = []
    replied: list[float] = []
    try:
        await session.open(
            JoinParams(epochs=options.epochs, steps=steps, batch_size=32, samples=32.0 * steps)
        )
        for epoch in range(options.epochs):
            session.apply(session.begin_epoch(epoch), -1)
            for step in range(steps):
                decisions = session.begin_batch_nowait(step)
                if decisions is None:
                    decisions = await session.begin_batch(step)
                session.apply(decisions, step)
                # float32 values and accuracies of whole hits, as Keras logs them
                loss = _f32(1.0 / (1 + step + epoch + rank % 3))
                accuracy = _f32(((step * 7 + rank) % (32 * (step + 1))) / (32 * (step + 1)))
                session.end_batch(step, {"loss": loss, "accuracy": accuracy}, 32.0 * (step + 1))
                if step % 64 == 63:
                    await asyncio.sleep(0)  # let the IO tasks of this process run
            sent.append(time.monotonic())
            decisions = await session.end_epoch(
                EpochEnd(
                    rank=rank,
                    epoch=epoch,
                    logs={"loss": 1.0 / (1 + epoch), "accuracy": 0.5},
                    samples=32.0 * steps,
                )
            )
            replied.append(time.monotonic())
            session.apply(decisions, -1)
            if model.stop_requested:
                break
        decisions, _ = await session.end_training()
        session.apply(decisions, -1)
        await session.finish({})
    finally:
        await session.close()
    out[rank] = {"rank": rank, "sent": sent, "replied": replied}


async def workers_main(options: argparse.Namespace) -> None:
    first, _, last = options.ranks.partition(":")
    out: dict[int, dict[str, Any]] = {}
    await asyncio.gather(*(run_rank(r, options, out) for r in range(int(first), int(last))))
    for rank in sorted(out):
        print(json.dumps(out[rank]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    coordinator = sub.add_parser("coordinator")
    coordinator.add_argument("--workers", type=int, required=True)
    coordinator.add_argument("--mode", choices=("barrier", "stream", "deciding"), required=True)
    coordinator.add_argument("--pin", type=int, default=None)
    workers = sub.add_parser("workers")
    workers.add_argument("--address", required=True)
    workers.add_argument("--token", required=True)
    workers.add_argument("--world", type=int, required=True)
    workers.add_argument("--ranks", required=True, help="first:last (last excluded)")
    workers.add_argument("--epochs", type=int, required=True)
    workers.add_argument("--steps", type=int, required=True)
    workers.add_argument("--pin", type=int, default=None)
    options = parser.parse_args()
    if options.pin is not None:
        os.sched_setaffinity(0, {options.pin})
    if options.role == "coordinator":
        asyncio.run(coordinator_main(options))
    else:
        asyncio.run(workers_main(options))


if __name__ == "__main__":
    sys.exit(main())
