"""Benchmark (issue 13): a `distcb coordinator` under 64 workers streaming at full speed.

The coordinator runs as ``distcb coordinator`` in its own process with an observing
batch callback (so every worker streams every batch log). Simulated workers speak the
real protocol over real sockets: `distcb.testing.ScriptedWorker` (the worker/ code real
workers run) over `distcb.transport.websocket.connect`, several per process. Measured
from outside: the coordinator's RSS (sampled from /proc, and its peak, VmHWM), the
slowest /healthz answer (a poller on its own thread, back to back), steps merged per
second (``/status``), and the load average.

    python bench/bench_coordinator_load.py --workers 64 --processes 8 --duration-s 60

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 2000
TOKEN = "bench-coordinator-load"


# ------------------------------------------------------------------ inside the coordinator


def callbacks() -> list[Any]:
    """``--callbacks bench.bench_coordinator_load:callbacks``: observe every merged batch,
    stop at the first epoch end after ``$BENCH_DURATION_S``."""
    from distcb.callbacks import Callback

    class StopAfter(Callback):
        decides_on_batch = False  # observes batches: workers stream, no window waits

        def __init__(self, duration_s: float) -> None:
            super().__init__()
            self.deadline = time.monotonic() + duration_s
            self.batches = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.batches += 1

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if time.monotonic() > self.deadline:
                self.model.stop_training = True

    return [StopAfter(float(os.environ["BENCH_DURATION_S"]))]


# ------------------------------------------------------------------ a process of workers


class _Repeat:
    """A script of `length` items, all `item` (no memory per step)."""

    def __init__(self, item: Any, length: int) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self.item


def run_workers(address: str, ranks: list[int], world_size: int, epochs: int) -> None:
    from distcb.protocol.config import Config
    from distcb.testing import ScriptedWorker
    from distcb.transport.websocket import connect

    config = Config(connect_timeout_s=60.0, heartbeat_timeout_s=60.0)

    async def one(rank: int) -> None:
        batch_logs = _Repeat(
            _Repeat({"loss": 0.5 + rank, "accuracy": 0.75}, STEPS_PER_EPOCH), epochs
        )
        worker = ScriptedWorker(
            rank,
            world_size,
            _Repeat({"loss": 0.5, "accuracy": 0.75}, epochs),
            batch_logs=batch_logs,
            params={"epochs": epochs, "steps": STEPS_PER_EPOCH},
            config=config,
        )
        connection = await connect(address, TOKEN, config=config)
        try:
            await worker.run(connection)
        finally:
            await connection.close()

    async def all_of_them() -> None:
        await asyncio.gather(*(one(rank) for rank in ranks))

    asyncio.run(all_of_them())


# ------------------------------------------------------------------ the driver


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def measure(workers: int, processes: int, duration_s: float) -> dict[str, Any]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        DISTCB_TOKEN=TOKEN,
        BENCH_DURATION_S=str(duration_s),
    )
    epochs = 100_000  # the callback stops the job after duration_s
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distcb",
            "coordinator",
            "--world-size",
            str(workers),
            "--port",
            "0",
            "--callbacks",
            "bench.bench_coordinator_load:callbacks",
            "--config",
            json.dumps({"heartbeat_timeout_s": 60.0, "max_connections": 4096}),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    address = re.search(r"listening on (\S+)", coordinator.stdout.readline()).group(1)
    base = f"http://{address}"
    idle_rss_mb = _status_kb(coordinator.pid, "VmRSS") / 1024
    load_before = os.getloadavg()
    groups = [list(range(workers))[i::processes] for i in range(processes)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--as-workers",
                address,
                ",".join(map(str, group)),
                str(workers),
                str(epochs),
            ],
            env=env,
        )
        for group in groups
    ]
    worst_s, answers, samples = 0.0, 0, []
    stop = threading.Event()

    def poll() -> None:
        nonlocal worst_s, answers
        while not stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=60) as response:
                    response.read()
                answers += 1
            except OSError:
                pass
            worst_s = max(worst_s, time.monotonic() - started)
            stop.wait(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.monotonic()
    status: dict[str, Any] = {}
    while coordinator.poll() is None:
        samples.append(_status_kb(coordinator.pid, "VmRSS") / 1024)
        peak_mb = _status_kb(coordinator.pid, "VmHWM") / 1024
        request = urllib.request.Request(
            base + "/status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status = json.load(response)
        except OSError:
            pass
        time.sleep(0.5)
    elapsed_s = time.monotonic() - started
    stop.set()
    poller.join(70)
    load_after = os.getloadavg()
    for child in children:
        child.wait(60)
    coordinator.wait(60)
    return {
        "workers": workers,
        "worker_processes": processes,
        "duration_s": round(elapsed_s, 1),
        "coordinator_rss_idle_mb": round(idle_rss_mb, 1),
        "coordinator_rss_max_sampled_mb": round(max(samples), 1),
        "coordinator_rss_peak_mb": round(peak_mb, 1),
        "healthz_worst_s": round(worst_s, 3),
        "healthz_answers": answers,
        "merged_steps": status.get("global_step"),
        "merged_steps_per_s": round((status.get("global_step") or 0) / elapsed_s, 1),
        "epochs": status.get("epoch"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }


COMMAND = "python bench/bench_coordinator_load.py --workers 64 --processes 8 --duration-s 60"


def section(result: dict[str, Any]) -> str:
    """The Markdown section of docs/BENCHMARKS.md for one `measure` result."""
    r = result
    rss_sampled, peak = r["coordinator_rss_max_sampled_mb"], r["coordinator_rss_peak_mb"]
    steps, rate = r["merged_steps"], r["merged_steps_per_s"]
    load = f"{r['loadavg_before']} / {r['loadavg_after']}"
    return "\n".join(
        [
            "## Coordinator under load: 64 workers streaming every batch (issue 13)",
            "",
            f"Command: `{COMMAND}` (also run by `make bench`). Simulated workers (the real",
            "worker/ protocol code, `ScriptedWorker`) over real websockets on loopback, 8 per",
            "process; the coordinator is `distcb coordinator` in its own process, with one",
            "observing batch callback, so every batch log of every worker is merged.",
            "",
            "| measure | value |",
            "| --- | --- |",
            f"| workers / worker processes | {r['workers']} / {r['worker_processes']} |",
            f"| run time | {r['duration_s']} s |",
            f"| coordinator RSS idle, before workers | {r['coordinator_rss_idle_mb']} MB |",
            f"| coordinator RSS, largest sample (every 0.5 s) | {rss_sampled} MB |",
            f"| coordinator peak RSS (VmHWM) | {peak} MB |",
            f"| worst /healthz latency ({r['healthz_answers']} answers) | {r['healthz_worst_s']} s"
            " |",
            f"| steps merged (of every worker) | {steps} ({rate}/s) |",
            f"| load average before / after (1, 5, 15 min) | {load} |",
            "",
            f"{r['cpus']} CPUs shared by the coordinator, the 8 worker processes and other",
            "sessions: the machine is saturated, so the latency is an upper bound for a",
            "coordinator with a core of its own; the RSS is what matters here.",
            "",
        ]
    )


def main() -> str:
    """`make bench` (bench/run_all.py): the full run, as a Markdown section."""
    return section(measure(64, 8, 60.0))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-workers":
        address, ranks, world_size, epochs = sys.argv[2:6]
        run_workers(address, [int(r) for r in ranks.split(",")], int(world_size), int(epochs))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--workers", type=int, default=64)
        parser.add_argument("--processes", type=int, default=8)
        parser.add_argument("--duration-s", type=float, default=60.0)
        parser.add_argument("--markdown", action="store_true", help="print the docs section")
        options = parser.parse_args()
        result = measure(options.workers, options.processes, options.duration_s)
        print(section(result) if options.markdown else json.dumps(result, indent=2))
