"""Benchmark (issue 25, item 15): a job's epoch time with 0, 1 and 200 status-page viewers.

A `distcb coordinator` in its own process, with an observing batch callback (so the
workers stream every batch log) that records when each epoch ended; 4 simulated workers
(`ScriptedWorker`, the real worker/ protocol code) over real websockets in one process;
and, in another process, V viewers that each open ``/events`` (the token as a bearer) and
read it to its end. ``/events`` takes `Config.max_status_streams` viewers (16 by
default) and answers the others 503; the last row raises the bound to 200 so that every
viewer streams (the status is rendered once per interval for all of them).

    python bench/bench_viewers.py [--epochs 8] [--steps 2000]

Prints the Markdown section (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-viewers"
WORKERS = 4
COMMAND = "python bench/bench_viewers.py --epochs 8 --steps 2000"


# ------------------------------------------------------------------ inside the coordinator


def callbacks() -> list[Any]:
    """``--callbacks bench.bench_viewers:callbacks``: observe every merged batch; write the
    wall time of every epoch end to ``$BENCH_OUT`` at the end."""
    from distcb.callbacks import Callback

    class EpochClock(Callback):
        decides_on_batch = False

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            pass

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.ends.append(time.monotonic())

        def on_train_end(self, logs: Any = None) -> None:
            Path(os.environ["BENCH_OUT"]).write_text(json.dumps(self.ends))

    return [EpochClock()]


# ------------------------------------------------------------------ workers, viewers


def run_workers(address: str, epochs: int, steps: int) -> None:
    from distcb.protocol.config import Config
    from distcb.testing import ScriptedWorker
    from distcb.transport.websocket import connect

    config = Config(connect_timeout_s=60.0, heartbeat_timeout_s=60.0)

    async def one(rank: int) -> None:
        worker = ScriptedWorker(
            rank,
            WORKERS,
            [{"loss": 0.5}] * epochs,
            batch_logs=[[{"loss": 0.5 + rank, "accuracy": 0.75}] * steps] * epochs,
            params={"epochs": epochs, "steps": steps},
            config=config,
        )
        connection = await connect(address, TOKEN, config=config)
        try:
            await worker.run(connection)
        finally:
            await connection.close()

    async def all_of_them() -> None:
        await asyncio.gather(*(one(rank) for rank in range(WORKERS)))

    asyncio.run(all_of_them())


def run_viewers(address: str, viewers: int, ready_path: str) -> None:
    """Open `viewers` event streams; read each to its end. Writes how many were accepted."""
    import aiohttp

    async def view(session: aiohttp.ClientSession) -> bool:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with session.get(f"http://{address}/events", headers=headers) as stream:
                if stream.status != 200:
                    return False
                async for _ in stream.content.iter_any():
                    pass
                return True
        except aiohttp.ClientError:
            return False

    async def all_of_them() -> int:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.ensure_future(view(session)) for _ in range(viewers)]
            return sum(await asyncio.gather(*tasks))

    Path(ready_path).write_text(str(asyncio.run(all_of_them())))


# ------------------------------------------------------------------ the driver


def measure(viewers: int, epochs: int, steps: int, max_streams: int | None, tmp: Path) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        DISTCB_TOKEN=TOKEN,
        BENCH_OUT=str(tmp / "ends.json"),
    )
    config: dict[str, Any] = {"heartbeat_timeout_s": 60.0, "max_anonymous_per_address": 512}
    if max_streams is not None:
        config["max_status_streams"] = max_streams
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "distcb", "coordinator", "--world-size", str(WORKERS)]
        + ["--port", "0", "--callbacks", "bench.bench_viewers:callbacks"]
        + ["--config", json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert coordinator.stdout is not None
    address = re.search(r"listening on (\S+)", coordinator.stdout.readline()).group(1)
    accepted_path = tmp / "accepted"
    watchers = None
    if viewers:
        watchers = subprocess.Popen(
            [sys.executable, __file__, "--as-viewers", address, str(viewers), str(accepted_path)],
            env=env,
        )
        time.sleep(2.0)  # the viewers connect before the job starts
    workers = subprocess.Popen(
        [sys.executable, __file__, "--as-workers", address, str(epochs), str(steps)], env=env
    )
    workers.wait(600)
    coordinator.wait(600)
    if watchers is not None:
        watchers.wait(120)
    ends = json.loads((tmp / "ends.json").read_text())
    epoch_s = [b - a for a, b in zip(ends, ends[1:], strict=False)]  # epoch 0 has the start
    return {
        "viewers": viewers,
        "streaming": int(accepted_path.read_text()) if viewers else 0,
        "max_streams": max_streams or 16,
        "epoch_s": epoch_s,
        "load": os.getloadavg()[0],
    }


def section(rows: list[dict], epochs: int, steps: int) -> str:
    lines = [
        "## The status page's viewers and the job's epoch time (issue 25, item 15)",
        "",
        f"Command: `{COMMAND}` (also run by `make bench`). A `distcb coordinator` process,",
        f"{WORKERS} simulated workers streaming every batch log ({steps} steps per epoch,"
        f" {epochs} epochs),",
        "and V viewers reading `/events` from another process (one status event per second",
        "each). Epoch time: between two epoch ends on the coordinator (epoch 0 left out).",
        "",
        "| viewers asking | streaming (`max_status_streams`) | epoch time min–**median**–max |"
        " load (1 min) |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        times = r["epoch_s"]
        spread = f"{min(times):.3f}–**{statistics.median(times):.3f}**–{max(times):.3f} s"
        lines.append(
            f"| {r['viewers']} | {r['streaming']} ({r['max_streams']}) | {spread} |"
            f" {r['load']:.2f} |"
        )
    lines += [
        "",
        "Viewers past `Config.max_status_streams` are answered 503 at once; those streaming",
        "share one rendering of the status per interval, and one that stops reading is",
        "dropped after `Config.status_write_timeout_s`.",
        "",
    ]
    return "\n".join(lines)


def main(epochs: int = 8, steps: int = 2000) -> str:
    """`make bench` (bench/run_all.py): every row, as a Markdown section."""
    import tempfile

    rows = []
    for viewers, max_streams in ((0, None), (1, None), (200, None), (200, 200)):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(viewers, epochs, steps, max_streams, Path(tmp)))
    return section(rows, epochs, steps)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-workers":
        run_workers(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--as-viewers":
        run_viewers(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--epochs", type=int, default=8)
        parser.add_argument("--steps", type=int, default=2000)
        options = parser.parse_args()
        print(main(options.epochs, options.steps))
