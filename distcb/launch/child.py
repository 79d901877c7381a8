"""Entry point of a worker process started by the process launcher.

`python -m distcb.launch.child SPEC` loads the training function from SPEC
(`distcb.launch.spec`), runs it as the worker its environment describes, and
on failure reports the error through the worker's open sessions and in a file
its launcher reads, before exiting non-zero. Exit codes (`distcb.protocol.exit_codes`):
0 finished, 143 stopped so that the job restarts (preempted, a restart, or the
coordinator lost), 1 the training function raised.
"""

from __future__ import annotations

import os
import sys
import traceback

from distcb.launch import spec
from distcb.protocol import exit_codes
from distcb.protocol.errors import CoordinatorLostError, JobInterrupted
from distcb.worker.context import WorkerHost, context_from_env, hosting


def main(spec_path: str) -> int:
    train_fn, args, kwargs = spec.read(spec_path)
    host = WorkerHost(context_from_env())
    try:
        with hosting(host):
            train_fn(*args, **kwargs)
    except (JobInterrupted, CoordinatorLostError) as exc:
        # Not this worker's fault: the job goes on (or can) from its backups. Retry me.
        print(f"distcb worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return exit_codes.PREEMPTED
    except BaseException as exc:
        host.report_failure(exc)
        text = "".join(traceback.format_exception(exc))
        spec.write_failure(
            os.path.dirname(spec_path), host.context.rank, f"{type(exc).__name__}: {exc}", text
        )
        traceback.print_exc()
        sys.stdout.flush()
        return exit_codes.FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
