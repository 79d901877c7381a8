"""One node of `distcb launch`: its worker processes, and on node 0 the coordinator.

    node 0:  coordinator + HTTP server (workers' websocket, rendezvous, status page)
             + nproc_per_node workers (ranks 0 .. nproc_per_node - 1)
    node k:  rendezvous with node 0, then nproc_per_node workers
             (ranks k * nproc_per_node ...)

Every node picks a free port per local worker and takes part in the rendezvous
(`distcb.launch.rendezvous`); with ``tf_config`` each worker's ``TF_CONFIG``
lists every worker of the job, from it. Each worker's environment is built by
`distcb.launch.env.worker_env`, as for the other launchers, plus
``DISTCB_LOCAL_RANK`` and ``DISTCB_NODE_RANK``.

Signals: SIGTERM and SIGHUP are forwarded to every worker's process group; a
second one, or `Config.stop_timeout_s` without an exit, kills them. SIGINT
(Ctrl-C) on node 0, once the workers train, is a coordinated stop instead: the
job stops at the next epoch end on every worker, `on_train_end` runs, the scripts
go on after `fit`, and the launcher exits 130; a second Ctrl-C stops the workers
(SIGTERM), a third kills them. Children never outlive the launcher.

Restarts (one node): with ``max_restarts`` and a ``run_dir``, a worker that is
lost or preempted restarts the job from its last epoch barrier (the journal goes
to ``<run_dir>/state``, the workers back up under ``run_dir``): every worker process
is started again and resumes from its backup, as `distcb.run(max_restarts=...)`
does. ``resume`` goes on from the journal a stopped launcher left there.

Output is copied line by line, prefixed with ``[rank N]``; node 0 shows the job's
progress (`distcb.launch.progress`) and how it ended.

Exit code (`distcb.protocol.exit_codes`), the same on every node: 0 when the
job finished (an early stop included), 143 when a launcher or a worker was
stopped by SIGTERM (or a worker was killed: "retry me"), 128 + N for another
signal N received by a launcher, 1 when the job failed, 2 for bad usage. Node 0
decides and tells the other nodes; a node that cannot reach node 0 at the end
decides from its own workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.coordinator.status import describe
from distcb.launch.children import ChildProcess, describe_exit, stop_all, wait_all
from distcb.launch.env import worker_env
from distcb.launch.node_plan import NodePlan, free_ports, join_address, node_host
from distcb.launch.progress import JobProgress
from distcb.launch.rendezvous import (
    Cluster,
    NodeInfo,
    Outcome,
    Rendezvous,
    RendezvousError,
)
from distcb.launch.rendezvous_client import RendezvousClient
from distcb.launch.usage import UsageError, bind_error
from distcb.protocol import exit_codes
from distcb.protocol.config import Config
from distcb.protocol.errors import DistcbError, WorkerLostError
from distcb.protocol.logs import to_json_value
from distcb.server.tls import server_context
from distcb.worker.context import WorkerContext

ENV_LOCAL_RANK = "DISTCB_LOCAL_RANK"
ENV_NODE_RANK = "DISTCB_NODE_RANK"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A worker that ended with one of these was stopped from outside, not broken: retry the job.
_STOPPED_FROM_OUTSIDE = {*exit_codes.RETRYABLE, -signal.SIGTERM, -signal.SIGKILL}


class NodeLauncher:
    """Runs one node of a job; `run` returns the exit code.

    Args:
        plan: what to run.
        out: where the workers' (prefixed) output goes.
        err: where the launcher's own messages go.
    """

    def __init__(self, plan: NodePlan, *, out: TextIO | None = None, err: TextIO | None = None):
        self.plan = plan
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self.children: list[ChildProcess] = []
        self.exit_codes: dict[int, int] = {}  # rank -> exit code, of every node's workers
        self._signalled: int | None = None
        self._main: asyncio.Task[int] | None = None
        self._killer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchers: list[asyncio.Task[None]] = []
        self._coordinator: Coordinator | None = None
        self._client: RendezvousClient | None = None
        self._outcome: Outcome | None = None  # node k: the job's, from node 0
        self._interrupted = False  # node 0: a Ctrl-C asked for a coordinated stop
        self._progress: JobProgress | None = None
        self._attempt = 0  # bumped at each restart: exits of older processes are not news
        self._spawned: tuple[Cluster, str, str] | None = None  # what a restart spawns again
        self._respawn: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ entry

    async def run(self) -> int:
        """Run this node until its workers ended; the exit code.

        Raises:
            UsageError: the coordinator's address cannot be bound, or a bad token.
        """
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            if self.plan.node_rank == 0:
                return await self._run_coordinator_node()
            return await self._run_worker_node()
        except asyncio.CancelledError:
            if self._signalled is None:
                raise
            return 128 + self._signalled
        finally:
            for signum in FORWARDED_SIGNALS:
                loop.remove_signal_handler(signum)
            if self._killer is not None:
                self._killer.cancel()
            await asyncio.to_thread(stop_all, self.children, 0.0)  # a no-op when all ended
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ node 0

    async def _run_coordinator_node(self) -> int:
        from distcb.server import WebSocketServer

        plan = self.plan
        resumable = bool(plan.max_restarts or plan.resume)
        if resumable and not plan.run_dir:
            raise UsageError(
                "--max-restarts and --resume need --run-dir: the journal and the workers' "
                "backups go there"
            )
        coordinator = Coordinator(
            plan.callbacks,
            world_size=plan.world_size,
            config=plan.config,
            state_dir=os.path.join(plan.run_dir, "state") if resumable and plan.run_dir else None,
            max_restarts=plan.max_restarts,
            resume=plan.resume,
        )
        self._coordinator = coordinator
        progress = JobProgress(
            coordinator, stream=self._err, show=plan.progress, exit_of=self._exit_of
        )
        coordinator.add_listener(progress)  # before the restart clears the exit codes
        coordinator.add_listener(_Restarts(self))
        self._progress = progress
        rendezvous = Rendezvous(
            plan.nnodes, plan.nproc_per_node, plan.config, report_exit=self._worker_ended
        )
        host, port = plan.coordinator
        bind_host = plan.bind_host or host
        try:
            ssl = None
            if plan.tls_cert is not None:
                ssl = server_context(plan.tls_cert, plan.tls_key or "")
            server = WebSocketServer(
                coordinator,
                host=bind_host,
                port=port,
                token=plan.token,
                config=plan.config,
                ssl=ssl,
                insecure=plan.insecure,
            )
        except ValueError as exc:  # beyond loopback without a token or TLS, a bad certificate
            raise UsageError(str(exc)) from None
        server.add_routes(rendezvous.routes(server.check_token))
        try:
            await server.start()
        except OSError as exc:
            raise bind_error(exc, bind_host, port, "--coordinator (or --bind)") from None
        try:
            bound_port = int(server.address.rpartition(":")[2])
            address = join_address(host, bound_port)  # what workers dial (never 0.0.0.0)
            scheme = "http" if plan.tls_cert is None else "https"
            self._say(
                f"coordinator listening on {server.address}; {plan.world_size} workers on "
                f"{plan.nnodes} node(s); status page {scheme}://{address}/"
            )
            if plan.token_generated and _is_terminal(self._err):
                # Only to a terminal: a log file would keep the token (issue 13's rule).
                self._say(f"sign in to the status page: {scheme}://{address}/?token={server.token}")
            elif plan.token_generated:
                self._say("set DISTCB_TOKEN to sign in to the status page")
            job = asyncio.get_running_loop().create_task(coordinator.run(), name="distcb-job")
            self._keep(job)
            ports = free_ports(plan.nproc_per_node)
            rendezvous.register(NodeInfo(0, plan.node_host or node_host(host, bound_port), ports))
            cluster_task = asyncio.ensure_future(rendezvous.wait_complete())
            await asyncio.wait({job, cluster_task}, return_when=asyncio.FIRST_COMPLETED)
            if cluster_task.done():
                self._spawn(cluster_task.result(), address, server.token)
            else:
                cluster_task.cancel()
            failure: BaseException | None = None
            history: History | None = None
            try:
                history = await job
            except Exception as exc:
                failure = exc
            await self._wait_children(
                grace_s=None if failure is None else plan.config.stop_timeout_s
            )
            code, reason = self._decide_outcome(failure)
            rendezvous.set_outcome(Outcome(code, reason))
            if history is not None and plan.history_path:
                await asyncio.to_thread(_write_history, plan.history_path, history)
            if failure is not None:
                if not isinstance(failure, DistcbError):  # a coordinator callback raised:
                    # its traceback, once (a worker's is in that worker's output already)
                    with contextlib.suppress(Exception):
                        self._err.write("".join(traceback.format_exception(failure)))
                self._say(f"the job failed: {reason}")
            elif not self._interrupted:  # else the progress display said how it stopped
                self._say(f"the job finished after {len(history.epoch) if history else 0} epochs")
            missing = await rendezvous.wait_nodes_done(plan.config.stop_timeout_s)
            if missing:
                self._say(f"nodes {missing} did not report their end; exiting anyway")
            return code
        finally:
            await rendezvous.aclose()
            await server.aclose()

    async def _worker_ended(self, rank: int, code: int) -> None:
        """A worker process of any node ended (node 0: tell the coordinator; others: node 0)."""
        self.exit_codes[rank] = code
        coordinator, client = self._coordinator, self._client
        if coordinator is None:
            if client is not None:
                await client.report_exit(rank, code)
            return
        if code == 0:
            await coordinator.report_exit(rank, "exited before it finished training (exit code 0)")
        elif code < 0 or code in exit_codes.RETRYABLE:
            coordinator.report_lost(rank, describe_exit(code))
        else:  # the script failed: a restart would fail again
            coordinator.report_lost(rank, describe_exit(code), retryable=False)

    def _decide_outcome(self, failure: BaseException | None) -> tuple[int, str | None]:
        if self._interrupted and self._signalled is None and failure is None:
            return 128 + signal.SIGINT, "stopped by Ctrl-C"
        if self._signalled is not None:
            name = signal.Signals(self._signalled).name
            reason = f"the launcher of node {self.plan.node_rank} received {name}"
            if failure is not None:
                reason += f"; the job: {_describe(failure)}"
            return 128 + self._signalled, reason
        if failure is None:
            return exit_codes.FINISHED, None
        if (
            isinstance(failure, WorkerLostError)
            and failure.retryable  # a rank whose code raised failed, however it was ended
            and self.exit_codes.get(failure.rank) in _STOPPED_FROM_OUTSIDE
        ):
            return exit_codes.PREEMPTED, _describe(failure)
        return exit_codes.FAILED, _describe(failure)

    # ------------------------------------------------------------------ node k > 0

    async def _run_worker_node(self) -> int:
        plan = self.plan
        if plan.token is None:
            raise UsageError(
                "a node other than node 0 needs the job's token: set DISTCB_TOKEN or pass "
                "--token-file, with the token node 0 has"
            )
        host, port = plan.coordinator
        client = RendezvousClient(
            plan.coordinator_address,
            plan.token,
            deadline_s=plan.config.join_timeout_s,
            ca_file=plan.tls_ca,
        )
        self._client = client
        ports = free_ports(plan.nproc_per_node)
        node = NodeInfo(plan.node_rank, plan.node_host or node_host(host, port), ports)
        self._say(f"joining the coordinator at {plan.coordinator_address}")
        try:
            cluster = await client.join(node, plan.nnodes, plan.nproc_per_node)
        except RendezvousError as exc:
            self._say(str(exc))
            return exit_codes.FAILED
        self._spawn(cluster, plan.coordinator_address, plan.token)
        follower = asyncio.get_running_loop().create_task(self._follow(client, cluster.config))
        self._keep(follower)
        await self._wait_children(grace_s=None)
        # Say so, and learn the outcome (unless the follower did: node 0 may be gone now).
        told = await client.outcome(
            plan.node_rank, 2.0 if self._outcome else cluster.config.stop_timeout_s, done=True
        )
        outcome = self._outcome or told
        if self._signalled is not None:
            return 128 + self._signalled
        if outcome is not None:
            if outcome.reason:
                self._say(f"the job ended: {outcome.reason}")
            return outcome.exit_code
        self._say("node 0 did not tell how the job ended; judging from this node's workers")
        failed = [c for c in self.exit_codes.values() if c != 0]
        if not failed:
            return exit_codes.FINISHED
        if all(c in _STOPPED_FROM_OUTSIDE for c in failed):
            return exit_codes.PREEMPTED
        return exit_codes.FAILED

    async def _follow(self, client: RendezvousClient, config: Config) -> None:
        """While this node's workers run: when node 0 says the job ended, give them
        `Config.stop_timeout_s` to end on their own, then stop them."""
        # Connection errors are retried inside; None: node 0 refused to tell (nothing to do).
        outcome = await client.outcome(self.plan.node_rank, math.inf, done=False)
        if outcome is None:
            return
        self._outcome = outcome
        alive = await asyncio.to_thread(wait_all, self.children, config.stop_timeout_s)
        if alive:
            self._say(
                f"the job ended ({outcome.reason or 'finished'}) but ranks "
                f"{[c.rank for c in alive]} did not exit within Config.stop_timeout_s="
                f"{config.stop_timeout_s:g} s; stopping them"
            )
            await asyncio.to_thread(stop_all, alive, 0.0)

    # ------------------------------------------------------------------ workers

    def _spawn(self, cluster: Cluster, address: str, token: str) -> None:
        plan = self.plan
        if self._signalled is not None:
            return
        self._spawned = (cluster, address, token)
        first = cluster.first_rank(plan.node_rank)
        tf_cluster = cluster.worker_addresses() if plan.tf_config else None
        jax_address = cluster.worker_addresses()[0] if plan.keras_distribution else None
        threads = plan.threads_per_worker or max(1, (os.cpu_count() or 1) // plan.nproc_per_node)
        gpus = plan.gpus_per_worker
        loop = asyncio.get_running_loop()
        for local_rank in range(plan.nproc_per_node):
            rank = first + local_rank
            context = WorkerContext(
                rank=rank,
                world_size=cluster.world_size,
                address=address,
                token=token,
                config=cluster.config,
                run_dir=plan.run_dir,
                tls_ca=plan.tls_ca,
            )
            variables, defaults = worker_env(
                context,
                extra={ENV_LOCAL_RANK: str(local_rank), ENV_NODE_RANK: str(plan.node_rank)},
                tf_cluster=tf_cluster,
                threads=threads,
                gpus=None if gpus is None else range(local_rank * gpus, (local_rank + 1) * gpus),
                keras_distribution=jax_address,
            )
            env = {**defaults, **os.environ, **variables, "PYTHONUNBUFFERED": "1"}
            child = ChildProcess(rank, plan.command, env, self._out)
            self.children.append(child)
            watcher = loop.create_task(
                self._watch(child, self._attempt), name=f"distcb-watch-{rank}"
            )
            self._keep(watcher)
            self._watchers.append(watcher)

    async def _watch(self, child: ChildProcess, attempt: int) -> None:
        code = await asyncio.to_thread(child.process.wait)
        await asyncio.to_thread(child.finish_output)
        if attempt != self._attempt:
            return  # a process of an attempt that ended in a restart
        if code != 0:
            self._say(f"rank {child.rank} {describe_exit(code)}")
        await self._worker_ended(child.rank, code)

    def _exit_of(self, rank: int) -> str | None:
        code = self.exit_codes.get(rank)
        return None if code is None or code == 0 else describe_exit(code)

    def _restart(self) -> None:
        """The coordinator restarts the job: every worker process starts again (node 0 of
        one node) once the ended attempt's processes are gone."""
        self._attempt += 1
        self.exit_codes.clear()  # the new attempt's exits are news again
        self._respawn = asyncio.get_running_loop().create_task(self._start_again())
        self._keep(self._respawn)

    async def _start_again(self) -> None:
        old, self.children = self.children, []
        watchers, self._watchers = self._watchers, []
        await asyncio.to_thread(stop_all, old, self.plan.config.stop_timeout_s / 2)
        await asyncio.gather(*watchers, return_exceptions=True)
        if self._spawned is not None and self._signalled is None:
            self._spawn(*self._spawned)

    async def _wait_children(self, grace_s: float | None) -> None:
        """Until every local worker ended: unbounded after a normal end (the script may go on
        after `fit`), at most `grace_s` after a failure, then they are stopped."""
        if self._respawn is not None:  # the job ended while a restart started them again
            await asyncio.gather(self._respawn, return_exceptions=True)
        if grace_s is None:
            await asyncio.to_thread(_wait_all, self.children)
        else:
            await asyncio.to_thread(stop_all, self.children, grace_s)
        # Their watchers report the exits (to node 0 too) before the outcome is computed.
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=self.plan.config.reply_timeout_s)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int) -> None:
        coordinator = self._coordinator
        forward = signum
        if signum == signal.SIGINT and self._signalled is None and coordinator is not None:
            if not self._interrupted and self.children:
                self._interrupted = True
                if coordinator.request_stop("Ctrl-C"):
                    self._note(
                        "Ctrl-C: the job stops at the end of this epoch, on every worker (press "
                        "Ctrl-C again to stop the workers at once)"
                    )
                    return
            forward = signal.SIGTERM  # the workers' own stop, not KeyboardInterrupt tracebacks
        if self._signalled is not None:  # a second signal: no more patience
            self._say(f"received {signal.Signals(signum).name} again; killing the workers")
            for child in self.children:
                child.signal(signal.SIGKILL)
            return
        self._signalled = signum
        name = signal.Signals(signum).name
        if forward == signum:
            self._say(f"received {name}; forwarding it to the workers")
        else:
            self._say(f"received {name}; sending {signal.Signals(forward).name} to the workers")
        if not self.children and self._main is not None:
            self._main.cancel()  # nothing started yet: stop waiting for the rendezvous
            return
        for child in self.children:
            child.signal(forward)
        loop = asyncio.get_running_loop()
        self._killer = loop.call_later(self.plan.config.stop_timeout_s, self._kill_all)

    def _kill_all(self) -> None:
        for child in self.children:
            child.signal(signal.SIGKILL)

    # ------------------------------------------------------------------ helpers

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.note(text)
        else:
            self._say(text)

    def _say(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self._err.write(f"distcb launch [node {self.plan.node_rank}]: {text}\n")
            self._err.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _wait_all(children: Sequence[ChildProcess]) -> None:
    for child in children:
        child.process.wait()


def _describe(error: BaseException) -> str:
    return describe(error)


def _write_history(path: str, history: History) -> None:
    data = {
        "epoch": history.epoch,
        "history": history.history,
        "worker_reports": {str(k): v for k, v in history.worker_reports.items()},
    }
    with open(path, "w") as handle:
        json.dump(to_json_value(data), handle, allow_nan=False)


class _Restarts(JobListener):
    """Tells the node launcher when the coordinator restarts the job."""

    def __init__(self, launcher: NodeLauncher):
        self.launcher = launcher

    def restarting(self, attempt: int, failure: BaseException) -> None:
        self.launcher._restart()
