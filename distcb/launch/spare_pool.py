"""Warm spares: worker processes started ahead of a restart, TensorFlow/Keras imported,
waiting for their rank (`distcb.launch.spare` is what each one runs).

Design (issue 24). A restart of a resumable job starts EVERY worker again: each rank
goes back to the last committed barrier, which is what makes the resume exact. So a
node keeps one spare per worker, one for each rank: the pool's spare for rank r was
started with rank r's environment for the next attempt, and on a restart each rank is
given its spare (`assign`): one JSON line on the spare's stdin with the rank's whole
environment and the job's spec file. The spare replaces its environment with it and
runs what a cold worker runs (`distcb.launch.child`), in a fresh interpreter that only
imported modules ahead of time: no state of a training run is reused, so the restarted
job is the one a cold restart gives. A rank whose spare died is started cold; a spare
still importing is given its rank all the same (it reads it once its imports are done,
still sooner than a cold start).

When: the process backend fills the pool once every worker of an attempt released an
epoch (`JobListener.epoch_released`), so that spares do not compete with the workers'
own start-up (imports, model, join) for the CPUs: a spare's import is as much CPU as a
worker's (on the 2-core test machine, under load, 4 to 30 s each), and a job's start
is what every run pays, while a restart is rare. The pool is filled again after each
restart, once the new attempt released an epoch (not at once: the restarted workers
restore meanwhile). A failure before the first epoch's release restarts cold. The
cost: one more interpreter with TensorFlow and Keras imported per worker (memory, a
few hundred MB each), for the job's life. A spare that dies before it is given
a rank is replaced, at most `max_deaths` times per rank (a spare that cannot start
must not spin); a rank without a spare is started cold. Every spare is stopped with
the job (`close`). Which modules a spare imports: `warm_imports`.

Survivors re-running in-process (keeping the live workers and rebuilding their model
from the backup) would skip the exit and the start of a process too, but would carry
the survivor's Python, Keras and TensorFlow state (random generators, compiled
functions, op determinism, the collective runtime's state) into the next attempt, and
no exactness guarantee survives that; a fresh process does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence

from distcb.launch.children import ChildProcess, stop_all

_logger = logging.getLogger(__name__)

# The modules worth importing ahead of time, in the order a worker imports them.
HEAVY_MODULES = ("tensorflow", "tf_keras", "jax", "keras")


def warm_imports(
    loaded: Iterable[str] = (), installed: Callable[[str], bool] | None = None
) -> list[str]:
    """Which modules a spare imports: those of `HEAVY_MODULES` the launcher has imported
    (`loaded`, its ``sys.modules``), else Keras when it is installed (a distcb worker
    trains a Keras model; Keras imports the backend the worker's environment names,
    with its ``KERAS_BACKEND``)."""
    present = set(loaded)
    names = [name for name in HEAVY_MODULES if name in present]
    if names:
        return names
    found = installed or _installed
    return ["keras"] if found("keras") else []


def _installed(name: str) -> bool:
    with contextlib.suppress(ImportError, ValueError):
        return importlib.util.find_spec(name) is not None
    return False


def spare_command() -> list[str]:
    return [sys.executable, "-m", "distcb.launch.spare"]


def assign(spare: ChildProcess, env: dict[str, str], spec_path: str) -> bool:
    """Give `spare` its rank: the rank's environment and the spec. Blocking (a spare still
    importing reads it when done; a line larger than the pipe's buffer waits for that).
    Returns False when the spare is gone (then start the rank cold)."""
    assert spare.process.stdin is not None
    if spare.process.poll() is not None:
        return False
    line = json.dumps({"env": env, "spec": spec_path}) + "\n"
    try:
        spare.process.stdin.write(line)
        spare.process.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        return False
    spare.prefix = f"[rank {spare.rank}] "
    return True


class SparePool:
    """One warm spare per rank of `ranks`, replaced when one dies, all stopped by `close`.

    Args:
        ranks: the ranks that get a spare.
        spawn: starts the spare of a rank (blocking; `spare_command`, the rank's
            environment for the next attempt, ``stdin_pipe=True``, `spare.READY_LINE`).
        max_deaths: how many spares of one rank may die before it gets no more.

    Call `fill` and `take` on the event loop; `close` too (it awaits the spares' end).
    """

    def __init__(
        self,
        ranks: Sequence[int],
        spawn: Callable[[int], ChildProcess],
        *,
        max_deaths: int = 3,
    ):
        self.ranks = tuple(ranks)
        self._spawn = spawn
        self._max_deaths = max_deaths
        self._spares: dict[int, ChildProcess] = {}
        self._deaths: dict[int, int] = {}
        self._filling: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = threading.Lock()  # `_spares` and `_closed`, also for the waiters
        self._loop: asyncio.AbstractEventLoop | None = None

    def spares(self) -> dict[int, ChildProcess]:
        """The spares waiting now, by rank."""
        with self._lock:
            return dict(self._spares)

    def fill(self) -> None:
        """Start, in the background, a spare for every rank that has none."""
        if self._closed or (self._filling is not None and not self._filling.done()):
            return
        self._loop = asyncio.get_running_loop()
        self._filling = self._loop.create_task(self._fill(), name="distcb-spares")

    async def wait_filled(self) -> None:
        """Wait until the filling started last is over (tests, benchmarks)."""
        if self._filling is not None:
            await asyncio.gather(self._filling, return_exceptions=True)

    async def _fill(self) -> None:
        for rank in self.ranks:
            with self._lock:
                if self._closed:
                    return
                if rank in self._spares or self._deaths.get(rank, 0) > self._max_deaths:
                    continue
            # The launcher's executor threads live as long as the loop: a spare's request
            # to die with its parent is tied to the thread that started it.
            try:
                spare = await asyncio.to_thread(self._spawn, rank)
            except OSError as exc:
                _logger.warning("distcb: could not start a warm spare for rank %d: %s", rank, exc)
                continue
            with self._lock:
                closed = self._closed
                if not closed:
                    self._spares[rank] = spare
            if closed:  # the job ended meanwhile
                await asyncio.to_thread(stop_all, [spare], 0.0, 1.0)
                return
            _logger.debug("distcb: warm spare for rank %d started (pid %d)", rank, spare.pid)
            threading.Thread(
                target=self._wait_death,
                args=(rank, spare),
                name=f"distcb-spare-{rank}",
                daemon=True,
            ).start()

    def _wait_death(self, rank: int, spare: ChildProcess) -> None:
        code = spare.wait()
        with self._lock:
            if self._closed or self._spares.get(rank) is not spare:
                return  # given a rank (a worker now) or stopped with the job
            del self._spares[rank]
            self._deaths[rank] = self._deaths.get(rank, 0) + 1
        _logger.warning(
            "distcb: the warm spare for rank %d (pid %d) exited with code %s before it was "
            "needed; starting another",
            rank,
            spare.pid,
            code,
        )
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the job is over
                loop.call_soon_threadsafe(self._refill_after_death)

    def _refill_after_death(self) -> None:
        if self._filling is not None and not self._filling.done():
            # A fill is running; it may have passed the rank already: fill again after it.
            self._filling.add_done_callback(lambda _: self.fill())
            return
        self.fill()

    def take(self, rank: int) -> ChildProcess | None:
        """The spare of `rank`, out of the pool, if it is still running."""
        with self._lock:
            spare = self._spares.pop(rank, None)
        if spare is None or spare.process.poll() is not None:
            return None
        return spare

    async def close(self) -> None:
        """Stop every spare still waiting (they hold nothing: SIGTERM, then SIGKILL)."""
        with self._lock:
            self._closed = True
            spares, self._spares = list(self._spares.values()), {}
        if self._filling is not None:
            await asyncio.gather(self._filling, return_exceptions=True)
        await asyncio.to_thread(stop_all, spares, 0.0, 2.0)
