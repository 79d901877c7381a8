"""`simulate`: a real Coordinator fed by scripted workers over a real transport."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.protocol.config import Config
from distcb.protocol.decisions import Decision
from distcb.protocol.errors import CoordinatorLostError
from distcb.protocol.logs import Logs
from distcb.testing.scripted import ScriptedWorker
from distcb.transport import connector_for
from distcb.transport.base import Connection
from distcb.transport.inproc import InProcessListener
from distcb.transport.memory import connection_pair

__all__ = ["TRANSPORTS", "SimulationResult", "asimulate", "simulate"]

Faults = dict[int, tuple[int, int]] | Sequence[dict[int, tuple[int, int]]]
TRANSPORTS = ("memory", "inproc", "websocket")


@dataclass
class SimulationResult:
    """What a simulated run produced.

    Attributes:
        history: the aggregated History (``.history``, ``.epoch``).
        decisions: every decision in the order the coordinator made them.
        stopped_epoch: the last epoch run when a decision stopped training, else None.
        learning_rates: the learning rate in effect during each epoch run (the chief's).
        weights: the weights the chief ends with (after any restore).
        workers: the scripted workers, for what each applied and when (those of the
            last attempt when the job restarted).
        coordinator: the coordinator (status(), decision log).
        attempts: the workers of every attempt (more than one after a restart).
    """

    history: History
    decisions: list[Decision]
    stopped_epoch: int | None
    learning_rates: list[float]
    weights: Any
    workers: list[ScriptedWorker]
    coordinator: Coordinator
    attempts: list[list[ScriptedWorker]] = field(default_factory=list)


async def asimulate(
    callbacks: Sequence[Any],
    epoch_logs: Sequence[Sequence[Logs]],
    batch_logs: Sequence[Sequence[Sequence[Logs]]] | None = None,
    params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    weights: Sequence[Any] | None = None,
    *,
    samples: Sequence[Sequence[float | None]] | None = None,
    val_samples: Sequence[Sequence[float | None]] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    yields_per_step: Sequence[int] | None = None,
    run_dir: str | None = None,
    max_restarts: int = 0,
    resume: bool = False,
    disconnect_at: Faults | None = None,
    preempt_at: Faults | None = None,
    transport: str = "memory",
) -> SimulationResult:
    """`simulate` for code already inside an event loop."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, received {transport!r}")
    if not epoch_logs or not epoch_logs[0]:
        raise ValueError("epoch_logs must hold at least one epoch with at least one worker's logs")
    world_size = len(epoch_logs[0])
    for epoch, row in enumerate(epoch_logs):
        if len(row) != world_size:
            raise ValueError(
                f"epoch_logs[{epoch}] has logs for {len(row)} workers, "
                f"epoch_logs[0] for {world_size}"
            )
    if batch_logs is not None and len(batch_logs) != len(epoch_logs):
        raise ValueError(
            f"batch_logs covers {len(batch_logs)} epochs, epoch_logs {len(epoch_logs)}"
        )
    config = config or Config()
    per_rank_params = (
        list(params) if isinstance(params, Sequence) else [dict(params or {})] * world_size
    )
    resumable = bool(max_restarts or resume)
    coordinator = Coordinator(
        callbacks,
        world_size=world_size,
        config=config,
        stateful_metrics=stateful_metrics,
        state_dir=os.path.join(run_dir, "state") if run_dir and resumable else None,
        max_restarts=max_restarts,
        resume=resume,
    )

    def fault(faults: Faults | None, attempt: int, rank: int) -> tuple[int, int] | None:
        if faults is None:
            return None
        per_attempt = [faults] if isinstance(faults, dict) else list(faults)
        return per_attempt[attempt].get(rank) if attempt < len(per_attempt) else None

    def make_workers(attempt: int) -> list[ScriptedWorker]:
        return [
            ScriptedWorker(
                rank=rank,
                world_size=world_size,
                epoch_logs=[row[rank] for row in epoch_logs],
                batch_logs=None
                if batch_logs is None
                else [[step[rank] for step in epoch] for epoch in batch_logs],
                params=dict(per_rank_params[rank]),
                weights=weights if rank == 0 else None,
                samples=None if samples is None else [row[rank] for row in samples],
                val_samples=None if val_samples is None else [row[rank] for row in val_samples],
                yields_per_step=1 if yields_per_step is None else yields_per_step[rank],
                config=config,
                disconnect_at=fault(disconnect_at, attempt, rank),
                preempt_at=fault(preempt_at, attempt, rank),
                run_dir=run_dir,
            )
            for rank in range(world_size)
        ]

    tasks: list[asyncio.Task[Any]] = []
    attempts: list[list[ScriptedWorker]] = []

    async def work(worker: ScriptedWorker, connect: Callable[[int], Awaitable[Connection]]) -> None:
        await worker.run(await connect(worker.rank))

    async with contextlib.AsyncExitStack() as stack:
        connect = await _serve(transport, coordinator, config, tasks, stack)

        def start(attempt: int) -> None:
            workers = make_workers(attempt)
            attempts.append(workers)
            for worker in workers:
                tasks.append(asyncio.create_task(work(worker, connect)))

        class Restarter(JobListener):
            def restarting(self, attempt: int, failure: BaseException) -> None:
                start(attempt + 1)

        coordinator.add_listener(Restarter())
        start(0)
        try:
            history = await coordinator.run()
        finally:  # the workers end before their server closes, as on a real job
            results = await asyncio.gather(*tasks, return_exceptions=True)
    if len(attempts) == 1:  # with restarts, a fault's own error is expected
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, CoordinatorLostError):
                raise result
    workers = attempts[-1]
    chief = workers[0]
    return SimulationResult(
        history=history,
        decisions=list(coordinator.decisions),
        stopped_epoch=chief.epochs_run - 1 if chief.stopped_by_decision else None,
        learning_rates=list(chief.learning_rates),
        weights=chief.current_weights,
        workers=workers,
        coordinator=coordinator,
        attempts=attempts,
    )


async def _serve(
    transport: str,
    coordinator: Coordinator,
    config: Config,
    tasks: list[asyncio.Task[Any]],
    stack: contextlib.AsyncExitStack,
) -> Callable[[int], Awaitable[Connection]]:
    """Serve `coordinator` over `transport` (closed by `stack`); how a rank's worker connects."""
    if transport == "memory":

        async def pair(rank: int) -> Connection:
            coordinator_end, worker_end = connection_pair(f"scripted worker {rank}")
            tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
            return worker_end

        return pair
    if transport == "inproc":
        listener = await stack.enter_async_context(InProcessListener(coordinator.serve))
        address, token = listener.address, listener.token
    else:
        from distcb.server import WebSocketServer  # aiohttp: loaded only for this transport

        server = await stack.enter_async_context(WebSocketServer(coordinator, config=config))
        address, token = server.address, server.token
    open_connection = connector_for(address, token, config)  # as a real worker picks it
    return lambda rank: open_connection()


def simulate(
    callbacks: Sequence[Any],
    epoch_logs: Sequence[Sequence[Logs]],
    batch_logs: Sequence[Sequence[Sequence[Logs]]] | None = None,
    params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    weights: Sequence[Any] | None = None,
    **kwargs: Any,
) -> SimulationResult:
    """Run `callbacks` on a real Coordinator fed by scripted workers; see the module docstring.

    Args:
        callbacks: the coordinator callbacks under test.
        epoch_logs: ``epoch_logs[epoch][rank]``, each worker's epoch logs.
        batch_logs: ``batch_logs[epoch][step][rank]``, optional batch logs.
        params: what every worker sends on join (``learning_rate``, ``directions``,
            ``steps``, ``samples``...), or one dict per rank.
        weights: ``weights[epoch]``, the chief's weights at the end of that epoch.
        samples, val_samples: ``[epoch][rank]`` sample counts sent with epoch logs.
        config: a `Config`; stateful_metrics: names taken from the chief.
        yields_per_step: per rank, how often it yields per step (makes workers uneven).
        run_dir: a directory for the journal and the workers' backups (with
            `max_restarts` or `resume`).
        max_restarts, resume: as `distcb.run`'s.
        disconnect_at, preempt_at: rank -> ``(epoch, step)``: that worker crashes (drops
            its connection) or is preempted (says it got SIGTERM) there, in the first
            attempt; or a list of such dicts, one per attempt. Restarted workers replay
            their scripts from where the job resumes.
        transport: "memory" (default), "inproc" or "websocket" (a real server on
            loopback): the same job over each must end the same way.

    Raises:
        RuntimeError: when called inside a running event loop (use `asimulate`).
        ValueError: an unknown transport.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(asimulate(callbacks, epoch_logs, batch_logs, params, weights, **kwargs))
    raise RuntimeError("simulate() cannot run inside an event loop; await asimulate(...) instead")
