"""`distcb.run`: train `train_fn` on several workers under one coordinator."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from distcb.callbacks.history import History
from distcb.core.config import Config

# backend name -> "module:function" taking the same keyword arguments.
BACKENDS = {
    "process": "distcb.launch.process:run_processes",
    "ray": "distcb.launch.ray_backend:run_ray",
}


def run(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any] = (),
    backend: str = "process",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    **backend_options: Any,
) -> History:
    """Run `train_fn(*args, **kwargs)` on `num_workers` workers; return the aggregated History.

    Each worker calls ``model.fit(..., callbacks=[distcb.keras.WorkerCallback()])``;
    the `callbacks` run once, on the coordinator in this process, on logs aggregated
    over all workers, and their decisions reach every worker at the same step.

    Args:
        train_fn: a picklable function (module level) that builds and fits the model.
        num_workers: how many workers.
        callbacks: coordinator callbacks (``distcb.callbacks.X`` or keras callbacks).
        backend: "process" (child processes on this machine) or "ray".
        args, kwargs: passed to `train_fn`.
        config: timeouts and limits (`distcb.Config`).
        stateful_metrics: metrics taken from the chief instead of averaged.
        **backend_options: process: ``tf_config``, ``gpus_per_worker``,
            ``threads_per_worker``, ``run_dir``, ``env``; ray: see distcb.launch.ray_backend.

    Raises:
        WorkerLostError: a worker raised, died or went silent (names the rank; carries
            its traceback when it raised). The other workers are stopped.
        JoinTimeoutError: not every worker joined in time.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable, received {train_fn!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, received {num_workers!r}")
    target = BACKENDS.get(backend)
    if target is None:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, received {backend!r}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict or None, received {type(kwargs).__name__}")
    module_name, function_name = target.split(":")
    launcher = getattr(importlib.import_module(module_name), function_name)
    coroutine = launcher(
        train_fn,
        num_workers=num_workers,
        callbacks=list(callbacks),
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        config=config or Config(),
        stateful_metrics=tuple(stateful_metrics),
        **backend_options,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError("distcb.run() cannot be called inside a running event loop")
