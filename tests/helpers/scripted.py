"""Scripted workers wired to a real Coordinator over the in-process transport."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from distcb.callbacks import Callback
from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.testing import ScriptedWorker
from distcb.transport.memory import connection_pair

FAST = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, stop_timeout_s=5.0)


def start_job(coordinator: Coordinator, workers: Sequence[ScriptedWorker]) -> list[asyncio.Task]:
    """Connect every worker to `coordinator`; returns their tasks, serve/run per worker."""
    tasks = []
    for worker in workers:
        coordinator_end, worker_end = connection_pair(f"scripted worker {worker.rank}")
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(asyncio.create_task(worker.run(worker_end)))
    return tasks


async def run_job(coordinator: Coordinator, workers: Sequence[ScriptedWorker]) -> Any:
    """Run the job; returns the History (raises the job's error) after every task ended."""
    tasks = start_job(coordinator, workers)
    try:
        return await asyncio.wait_for(coordinator.run(), 30)
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)


def batches(epochs: int, steps: int, workers: int, value: float = 1.0) -> list:
    """``batch_logs[epoch][step][rank]`` with loss = value + step."""
    return [
        [[{"loss": value + s} for _ in range(workers)] for s in range(steps)] for _ in range(epochs)
    ]


class StopAtBatch(Callback):
    """Stops training from the batch hook of (epoch, step)."""

    def __init__(self, epoch: int, step: int):
        super().__init__()
        self.at = (epoch, step)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


class Recorder(Callback):
    """Records the hooks it saw, with copies of their logs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs or {})))
