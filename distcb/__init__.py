"""distcb: Keras callbacks coordinated across a distributed training job.

Workers train and stream their logs; one coordinator aggregates them, runs
the callback chain once and sends every worker the same decisions.
"""

from __future__ import annotations

import importlib
from typing import Any

from distcb.protocol.config import Config
from distcb.protocol.errors import (
    AggregationError,
    CallbackFailed,
    ConnectionClosed,
    CoordinatorLostError,
    DecisionError,
    DistcbError,
    IntegrityError,
    JobFailed,
    JobFailedError,
    JobInterrupted,
    JoinTimeoutError,
    JournalMismatchError,
    ProtocolError,
    RendezvousError,
    RestartsExhausted,
    WorkerLostError,
)

__version__ = "0.1.0"

_LAZY = {
    "Coordinator": "distcb.coordinator.engine",
    "run": "distcb.launch.api",
    "arun": "distcb.launch.api",
    "worker_context": "distcb.worker.context",
    "worker_main": "distcb.launch.worker_main",
    "WorkerContext": "distcb.worker.context",
    "History": "distcb.callbacks.history",
}

__all__ = [
    "AggregationError",
    "CallbackFailed",
    "Config",
    "ConnectionClosed",
    "Coordinator",
    "CoordinatorLostError",
    "DecisionError",
    "DistcbError",
    "History",
    "IntegrityError",
    "JobFailed",
    "JobFailedError",
    "JobInterrupted",
    "JoinTimeoutError",
    "JournalMismatchError",
    "ProtocolError",
    "RendezvousError",
    "RestartsExhausted",
    "WorkerContext",
    "WorkerLostError",
    "arun",
    "run",
    "worker_context",
    "worker_main",
]


_SUBMODULES = {"callbacks", "keras", "testing", "tune"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # `import distcb` then `distcb.tune.run(...)` works
        return importlib.import_module(f"distcb.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distcb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
