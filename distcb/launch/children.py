"""Worker processes of a launcher: started in their own process group, their output
prefixed by rank (TensorFlow's start-up lines dropped: `distcb.launch.quiet`),
signalled, and never left behind.

Each child runs in a new session (its own process group), so that a signal sent
to it reaches whatever it starts too, and a Ctrl-C in the launcher's terminal
reaches the launcher only: the launcher decides what the children get.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from distcb.launch import quiet


class ChildProcess:
    """One worker process and the thread that copies its output, line by line, prefixed.

    Args:
        rank: the worker's rank (the prefix is ``[rank N] ``).
        command: the command line.
        env: its whole environment.
        out: where its output goes (stdout and stderr, merged, in order).
        prefix: another prefix, until `prefix` is set again (a warm spare's, until it is
            given its rank: `distcb.launch.spare_pool`).
        ready_line: a line of output that is not copied but means "ready": it sets `ready`
            and calls `on_ready`.
        on_ready: called (from the output thread) when `ready_line` arrives.
        stdin_pipe: give the child a pipe as stdin (`process.stdin`) instead of /dev/null.
    """

    def __init__(
        self,
        rank: int,
        command: Sequence[str],
        env: Mapping[str, str],
        out: TextIO,
        *,
        prefix: str | None = None,
        ready_line: str | None = None,
        on_ready: Callable[[], None] | None = None,
        stdin_pipe: bool = False,
    ):
        self.rank = rank
        self.prefix = f"[rank {rank}] " if prefix is None else prefix
        self.ready = threading.Event()
        self._ready_line = ready_line
        self._on_ready = on_ready
        self._tf_level = quiet.min_level(env)  # TensorFlow's start-up lines it hides
        self.process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._pump = threading.Thread(
            target=self._copy, args=(out,), name=f"distcb-out-{rank}", daemon=True
        )
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _copy(self, out: TextIO) -> None:
        # Keep draining whatever happens: a child blocked on a full pipe would hang the job.
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                if self._ready_line is not None and line.rstrip("\n") == self._ready_line:
                    self.ready.set()
                    if self._on_ready is not None:
                        with contextlib.suppress(Exception):
                            self._on_ready()
                    continue
                if quiet.is_hidden(line, self._tf_level):
                    continue
                with contextlib.suppress(Exception):
                    out.write(self.prefix + line)
                    out.flush()

    def signal(self, signum: int) -> None:
        """Send `signum` to the child's process group: the child and what it started (the
        group outlives its leader while any of them runs)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Its exit code (negative: killed by that signal), or None if still running."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout_s)
        return None

    def finish_output(self, timeout_s: float = 5.0) -> None:
        """Wait until its output has been copied (after it ended)."""
        self._pump.join(timeout_s)


def describe_exit(code: int) -> str:
    """An exit code as a person reads it."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def wait_all(children: Sequence[ChildProcess], timeout_s: float) -> list[ChildProcess]:
    """Wait up to `timeout_s` for every child to exit; the ones still running. Blocking."""
    deadline = time.monotonic() + timeout_s
    for child in children:
        child.wait(max(0.0, deadline - time.monotonic()))
    return [c for c in children if c.process.poll() is None]


def stop_all(children: Sequence[ChildProcess], grace_s: float, kill_after_s: float = 5.0) -> None:
    """End every child and everything it started: wait `grace_s` for them to exit on their
    own, SIGTERM their process groups, wait `kill_after_s`, SIGKILL the groups. Blocking."""
    if wait_all(children, grace_s):
        for child in children:
            child.signal(signal.SIGTERM)
        wait_all(children, kill_after_s)
    for child in children:  # also the groups whose leader ended: nothing outlives the launcher
        child.signal(signal.SIGKILL)
        child.wait()
    for child in children:
        child.finish_output()
