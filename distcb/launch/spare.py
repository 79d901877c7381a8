"""Entry point of a warm spare: a worker process that has imported the heavy modules
and waits to be told to run (`distcb.launch.spare_pool` starts and assigns them).

    python -m distcb.launch.spare

1. asks to die with its launcher (`child.die_with_parent`), first thing;
2. imports the modules named in ``DISTCB_WARM_IMPORTS`` (comma-separated: TensorFlow,
   Keras, ...), which is most of a restarted worker's start-up. Importing them does not
   start TensorFlow's runtime: no eager context, no thread pools, no devices (checked by
   tests/launch/test_warm_spares.py), so thread counts and ``CUDA_VISIBLE_DEVICES`` set
   afterwards still take effect. A module that fails to import is skipped (the worker
   itself will then fail to import it as a cold one would, with its own traceback);
3. prints `READY_LINE` (its launcher's output thread swallows it);
4. reads ONE assignment, a JSON line on stdin: ``{"env": {...}, "spec": PATH}``, the
   whole environment of its rank and the job's spec file; replaces its environment with
   it, makes stdin /dev/null and ``sys.argv`` what a cold worker has, and then runs
   exactly what a cold worker runs (`distcb.launch.child.run_and_exit`). End of input
   before an assignment (the launcher closed the pipe): it exits 0.

It was started with the environment its rank will have in the attempt it is kept for
(`spare_pool`), so that anything read from the environment while importing (Keras'
backend, TensorFlow's log level, the thread and GPU variables) is what a cold worker
reads; the assignment's environment replaces it anyway.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

ENV_WARM_IMPORTS = "DISTCB_WARM_IMPORTS"
READY_LINE = "distcb-spare-ready"
# What `distcb.launch.child.main` imports before the training function runs: cheap, but
# imported here too so that an assigned spare starts at the training function.
_WORKER_MODULES = (
    "distcb.launch.spec",
    "distcb.launch.worker_main",
    "distcb.worker.context",
    "distcb.protocol.errors",
)


def warm_up(names: list[str]) -> list[str]:
    """Import `names` and the worker's own modules; the names that failed to import."""
    failed = []
    for name in [*names, *_WORKER_MODULES]:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
            print(
                f"distcb: warm spare could not import {name} (a worker will try again):\n"
                + traceback.format_exc(),
                flush=True,
            )
    return failed


def read_assignment(line: str) -> tuple[dict[str, str], str]:
    """``(env, spec_path)`` from the launcher's assignment line.

    Raises:
        ValueError: not an assignment (the message shows what was received).
    """
    try:
        data: Any = json.loads(line)
        env, spec_path = data["env"], data["spec"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f'a warm spare expects one JSON line {{"env": {{...}}, "spec": PATH}}, '
            f"received {line[:200]!r}"
        ) from exc
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError(f"the assignment's env must map str to str, received {env!r:.200}")
    if not isinstance(spec_path, str):
        raise ValueError(f"the assignment's spec must be a path, received {spec_path!r}")
    return env, spec_path


def become_worker(env: dict[str, str], spec_path: str) -> None:
    """Make this process look as a cold worker does: its environment (also for C code:
    `os.environ` sets and unsets the process's own), stdin and argv."""
    os.environ.clear()
    os.environ.update(env)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    from distcb.launch import child

    sys.argv = [child.__file__, spec_path]


def main() -> None:
    from distcb.launch import child

    child.die_with_parent(child.launcher_pid_from_env())
    names = [n for n in os.environ.get(ENV_WARM_IMPORTS, "").split(",") if n]
    warm_up(names)
    print(READY_LINE, flush=True)
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)  # not needed: the job ended
    env, spec_path = read_assignment(line)
    become_worker(env, spec_path)
    child.run_and_exit(spec_path)


if __name__ == "__main__":
    main()
