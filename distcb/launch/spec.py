"""What a launcher hands its worker processes: the training function and its arguments.

The spec is a local file, readable only by this user, written by the launching
process for its own children (a process boundary of ours, never the network).
A function is pickled by reference when its module can be imported; a function
defined in the launching script is found again by re-running that script as
``__mp_main__`` (as multiprocessing's spawn does); one with nowhere to be
imported from (a notebook cell, ``python -c``) is pickled by value with
cloudpickle.
"""

from __future__ import annotations

import json
import os
import pickle
import runpy
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

SPEC_NAME = "spec.pkl"


def _defined_in_main(fn: Any) -> bool:
    return getattr(fn, "__module__", None) in ("__main__", "__mp_main__")


def write(
    spec_dir: str, train_fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> str:
    """Write the spec for `train_fn(*args, **kwargs)` into `spec_dir`; returns its path."""
    main = sys.modules.get("__main__")
    main_path = getattr(main, "__file__", None) if _defined_in_main(train_fn) else None
    if main_path is not None and not os.path.isfile(main_path):
        main_path = None
    if _defined_in_main(train_fn) and main_path is None:
        payload = cloudpickle.dumps((train_fn, tuple(args), dict(kwargs)))  # by value
        by_value = True
    else:
        payload = pickle.dumps((train_fn, tuple(args), dict(kwargs)))
        by_value = False
    path = os.path.join(spec_dir, SPEC_NAME)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
        pickle.dump(
            {
                "payload": payload,
                "by_value": by_value,
                "main_path": os.path.abspath(main_path) if main_path else None,
            },
            handle,
        )
    return path


def _load_main(path: str) -> None:
    # Functions defined in the launching script pickle as `__main__.name`:
    # run that script as `__mp_main__` (its `if __name__ == "__main__"` block
    # stays off) and alias it, as multiprocessing's spawn does.
    module = types.ModuleType("__mp_main__")
    module.__file__ = path
    sys.modules["__mp_main__"] = module
    sys.modules["__main__"] = module
    module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))


def read(path: str) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Load a spec written by `write` (in the child process)."""
    with open(path, "rb") as handle:
        spec = pickle.load(handle)  # our own parent's local file, not network input
    if spec.get("main_path"):
        sys.path.insert(0, os.path.dirname(spec["main_path"]))
        _load_main(spec["main_path"])
    loader = cloudpickle.loads if spec.get("by_value") else pickle.loads
    train_fn, args, kwargs = loader(spec["payload"])
    return train_fn, args, kwargs


def failure_path(spec_dir: str, rank: int) -> str:
    return os.path.join(spec_dir, f"rank-{rank}.json")


def write_failure(spec_dir: str, rank: int, error: str, traceback_text: str) -> None:
    with open(failure_path(spec_dir, rank), "w") as handle:
        json.dump({"error": error, "traceback": traceback_text}, handle)


def read_failure(spec_dir: str, rank: int) -> dict[str, Any] | None:
    path = failure_path(spec_dir, rank)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        data: dict[str, Any] = json.load(handle)
    return data
