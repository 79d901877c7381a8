"""`JobSpec`: what a job is, checked once and handed whole to a backend's `launch`.

`distcb.run`, `distcb.arun` and `distcb.tune.run` build one from their arguments;
every backend (`process`, `thread`, `ray`) takes it as it is, so a new argument is
added here and in the entry points, never in each backend's signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distcb.launch.options import DEFAULT_OPTIONS, LaunchOptions
from distcb.protocol.config import Config

__all__ = ["JobSpec"]


@dataclass(frozen=True)
class JobSpec:
    """One distributed job: the function the workers run, how many, and the coordinator's
    side (callbacks, config, restarts).

    Attributes:
        train_fn: the function each worker calls as ``train_fn(*args, **kwargs)``.
        num_workers: how many workers (an int >= 1).
        callbacks: the coordinator's callbacks, in chain order (the objects themselves:
            their state after the job is the caller's, History included).
        args, kwargs: passed to `train_fn` (`kwargs`: a copy of the caller's dict).
        config: timeouts and limits.
        stateful_metrics: metrics taken from the chief instead of averaged.
        options: the backend's options (`LaunchOptions`).
        max_restarts: restarts allowed after a lost or preempted worker (needs
            ``options.run_dir``).
        resume: go on from the journal in ``options.run_dir``.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range (the
            message names it and what was received).
    """

    train_fn: Callable[..., Any]
    num_workers: int
    callbacks: tuple[Any, ...] = ()
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: Config = dataclasses.field(default_factory=Config)
    stateful_metrics: tuple[str, ...] = ()
    options: LaunchOptions = DEFAULT_OPTIONS
    max_restarts: int = 0
    resume: bool = False

    @classmethod
    def build(
        cls,
        train_fn: Callable[..., Any],
        *,
        num_workers: int,
        callbacks: Sequence[Any] = (),
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        config: Config | None = None,
        stateful_metrics: Sequence[str] = (),
        options: LaunchOptions = DEFAULT_OPTIONS,
        max_restarts: int = 0,
        resume: bool = False,
    ) -> JobSpec:
        """A spec from `distcb.run`'s arguments as a caller passes them (lists, None)."""
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs must be a dict or None, received {type(kwargs).__name__}")
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a distcb.Config, received {type(config).__name__}")
        return cls(
            train_fn,
            num_workers=num_workers,
            callbacks=tuple(callbacks),
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            config=config or Config(),
            stateful_metrics=tuple(stateful_metrics),
            options=options,
            max_restarts=max_restarts,
            resume=resume,
        )

    def __post_init__(self) -> None:
        if not callable(self.train_fn):
            raise TypeError(f"train_fn must be callable, received {self.train_fn!r}")
        workers = self.num_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, received {workers!r}")
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"kwargs must be a dict, received {type(self.kwargs).__name__}")
        if not isinstance(self.config, Config):
            raise TypeError(
                f"config must be a distcb.Config, received {type(self.config).__name__}"
            )
        restarts = self.max_restarts
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, received {restarts!r}")
        if not isinstance(self.resume, bool):
            raise TypeError(f"resume must be a bool, received {self.resume!r}")
        if self.resumable and not self.options.run_dir:
            raise ValueError(
                "max_restarts and resume need run_dir: the journal and the workers' backups go "
                "there (a directory every worker can read)"
            )
        # Copies: a backend cannot change what the caller passed (a dict, not a read-only
        # view: the backends pickle it to the workers).
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "stateful_metrics", tuple(self.stateful_metrics))

    @property
    def resumable(self) -> bool:
        """Whether the coordinator journals (restarts allowed, or resuming)."""
        return bool(self.max_restarts or self.resume)

    def call(self) -> Any:
        """Run `train_fn` as a worker does: ``train_fn(*args, **kwargs)``."""
        return self.train_fn(*self.args, **self.kwargs)
