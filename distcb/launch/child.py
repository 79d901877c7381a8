"""Entry point of a worker process started by the process launcher.

`python -m distcb.launch.child SPEC` loads the training function from SPEC
(`distcb.launch.spec`), runs it as the worker its environment describes, and
on failure reports the error through the worker's open sessions and in a file
its launcher reads, before exiting non-zero. Exit codes (`distcb.protocol.exit_codes`):
0 finished, 143 stopped so that the job restarts (preempted, a restart, or the
coordinator lost), 1 the training function raised. A worker exiting 143 skips the
interpreter's teardown (`run_and_exit`): the restart waits for it.

A worker never outlives its launcher: on Linux it asks the kernel for SIGKILL
when its parent dies (``PR_SET_PDEATHSIG``), first thing, before any import
that takes time, and then checks that its parent is still the launcher (which
may have died before the request took hold).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from typing import NoReturn

ENV_LAUNCHER_PID = "DISTCB_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(launcher_pid: int | None) -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux); exit at once
    when the parent is no longer `launcher_pid`. Returns whether the request took hold."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if launcher_pid is not None and os.getppid() != launcher_pid:
        os._exit(1)  # the launcher died before the request: nothing would ever stop us
    return armed


def main(spec_path: str) -> int:
    from distcb.launch import spec
    from distcb.launch.worker_main import exit_code_of
    from distcb.protocol import exit_codes
    from distcb.protocol.errors import JobFailed, JobFailedError
    from distcb.worker.context import WorkerHost, context_from_env, hosting

    train_fn, args, kwargs = spec.read(spec_path)
    host = WorkerHost(context_from_env())
    try:
        with hosting(host):
            train_fn(*args, **kwargs)
    except BaseException as exc:
        # The same exit codes as a worker run by `distcb.worker_main` (a pod's script).
        # Its traceback goes to the launcher (the failure file), which raises it from
        # distcb.run: printed once, by whoever catches or ends with that error.
        code = (
            exit_code_of(host, exc, print_traceback=False)
            if isinstance(exc, Exception | SystemExit)
            else None
        )
        if code is None:  # KeyboardInterrupt and the like: training did not finish
            host.report_failure(exc)
            code = exit_codes.FAILED
        if code == exit_codes.FAILED and not isinstance(exc, JobFailed | JobFailedError):
            text = "".join(traceback.format_exception(exc))
            spec.write_failure(
                os.path.dirname(spec_path), host.context.rank, f"{type(exc).__name__}: {exc}", text
            )
        return code
    return exit_codes.FINISHED


def launcher_pid_from_env() -> int | None:
    """The launcher's pid its environment names (None: not started by a launcher)."""
    value = os.environ.get(ENV_LAUNCHER_PID)
    return int(value) if value and value.isdigit() else None


def run_and_exit(spec_path: str) -> NoReturn:
    """Run the worker of `spec_path` (`main`) and end this process with its exit code: what
    a worker process does once it knows its rank (a cold child here, or a warm spare,
    `distcb.launch.spare`, once it was given one)."""
    code = main(spec_path)
    from distcb.launch.keras_distribution import exit_past_jax_shutdown
    from distcb.protocol import exit_codes

    exit_past_jax_shutdown(code)
    if code == exit_codes.PREEMPTED:
        # "Retry me": the attempt is over, the worker said so, and a restart waits for this
        # process to end. The interpreter's teardown (TensorFlow's, JAX's, their threads)
        # took 4 to 10 s on a loaded machine; skipping it ends the process as a SIGKILL
        # would at this point, which the resume is exact against.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    die_with_parent(launcher_pid_from_env())
    run_and_exit(sys.argv[1])
