"""`worker_main`: a worker script's entry point where something outside distcb restarts it.

A Kubernetes pod (or a Slurm step, or any launcher that acts on exit codes) runs
the training script itself; nothing of distcb's launchers wraps it. What the
process exits with is then the only thing the failure policy sees, so it must
say what happened:

- 0: `main` returned (the job finished, also after a coordinated early stop);
- 143, "retry me": the job goes on from its backups (`JobInterrupted`: this
  worker was preempted, or the coordinator restarts the job), or the
  coordinator was lost without having said the job failed; also when training
  raised after the coordinator had said the job restarts, or raised
  MultiWorkerMirroredStrategy's sign of a lost peer (TensorFlow's
  ``UnavailableError``: collectives are aborted and "it's required to restart
  in order to recover"), unless the coordinator says the job failed: a
  SIGKILLed worker takes its peers' collectives down with it;
- 1: the coordinator said the job failed (another rank or a coordinator callback
  raised, the job was refused: `JobFailed`), or training raised for another reason,
  a bug a restart would repeat: the coordinator is told (`WorkerFailed`), so it
  fails the job at once and names this rank instead of waiting for a restart that
  cannot help;
- anything `main` returns or exits with (argparse's 2, for one).

The process backend's child does the same for the workers `distcb.run` starts
(`distcb.launch.child`).
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from collections.abc import Callable

from distcb.protocol import exit_codes
from distcb.protocol.errors import (
    CoordinatorLostError,
    JobFailed,
    JobFailedError,
    JobInterrupted,
)
from distcb.worker.context import WorkerHost, context_from_env, hosting

__all__ = ["worker_main"]

_POLL_S = 0.05
_GLOO_FAILED = re.compile(r"\bGloo \w+ failed\b")


def worker_main(main: Callable[[], int | None]) -> int:
    """Run `main` (which calls ``model.fit`` with a `WorkerCallback`) and return the exit
    code a restart policy can act on (see the module docstring)::

        if __name__ == "__main__":
            sys.exit(distcb.worker_main(main))
    """
    if not callable(main):
        raise TypeError(f"worker_main needs a callable main, received {main!r}")
    host = WorkerHost(context_from_env())
    try:
        with hosting(host):
            code = main()
    except (JobInterrupted, CoordinatorLostError, Exception) as exc:
        return exit_code_of(host, exc)
    if code is None:
        return exit_codes.FINISHED
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"main must return an int exit code or None, received {code!r}")
    return code


def exit_code_of(host: WorkerHost, error: BaseException, *, print_traceback: bool = True) -> int:
    """The exit code of a worker whose training raised `error` (the module docstring's
    table); a failure (1) is reported to the coordinator through `host`'s sessions, and
    its traceback printed unless `print_traceback` is False (a launcher that shows it
    itself: the traceback is printed once)."""
    verdict = host.verdict()
    if isinstance(error, JobFailed | JobFailedError):
        # The job failed elsewhere; the worker said so in one line, and the traceback that
        # matters was printed where it was raised.
        if isinstance(error, JobFailedError):
            print(f"distcb worker: {error}; exiting with code 1", file=sys.stderr, flush=True)
        return exit_codes.FAILED
    if isinstance(error, (JobInterrupted, CoordinatorLostError)):
        if verdict == "failed":
            # The coordinator failed the job before this worker lost it (its Abort came
            # first): a retry cannot help, whatever ended the connection afterwards.
            print(
                f"distcb worker: {type(error).__name__} after the coordinator had failed the "
                "job; exiting with code 1 (failed), not 143",
                file=sys.stderr,
                flush=True,
            )
            return exit_codes.FAILED
        _say(f"{type(error).__name__}: {error}")
        return exit_codes.PREEMPTED
    if verdict is None and peer_lost(error):
        # The coordinator learns of a lost worker by itself (its connection drops, or its
        # heartbeats stop): wait for its word rather than race it.
        verdict = _await_verdict(host, host.context.config.heartbeat_timeout_s)
        if verdict is None:
            verdict = "restart"  # a lost peer that the coordinator still sees: retry
    if verdict == "restart":
        _say(f"training raised after the job began to restart: {type(error).__name__}")
        return exit_codes.PREEMPTED
    host.report_failure(error)
    if print_traceback:
        traceback.print_exception(error)
        sys.stdout.flush()
    return exit_codes.FAILED


def peer_lost(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a collective's sign that a peer went away:
    TensorFlow's ``UnavailableError``, which MultiWorkerMirroredStrategy raises once any
    worker is unreachable, or a failed gloo collective of JAX's CPU backend (a peer
    process that died resets its connections: "Gloo AllReduce failed: ... Connection
    reset by peer"). Read by name and message: distcb imports neither for it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for cls in type(current).__mro__:
            if cls.__name__ == "UnavailableError" and cls.__module__.startswith("tensorflow"):
                return True
        if _GLOO_FAILED.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _await_verdict(host: WorkerHost, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while True:
        verdict = host.verdict()
        if verdict is not None or time.monotonic() >= deadline:
            return verdict
        time.sleep(_POLL_S)


def _say(text: str) -> None:
    print(f"distcb worker: {text}; exiting with code 143 (retry me)", file=sys.stderr, flush=True)
