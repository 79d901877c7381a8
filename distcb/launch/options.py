"""`LaunchOptions`: the backend options of `distcb.run`, one frozen object for every backend.

Each backend declares the options it supports (`SUPPORTED_OPTIONS` in its
module); an option a backend does not support is a TypeError that says so,
never silently ignored.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

# Old spellings, still accepted with a DeprecationWarning.
_ALIASES = {"num_gpus_per_worker": "gpus_per_worker", "num_cpus_per_worker": "cpus_per_worker"}


@dataclass(frozen=True)
class LaunchOptions:
    """How a backend starts and places the workers.

    Attributes:
        tf_config: set ``TF_CONFIG`` on every worker for MultiWorkerMirroredStrategy.
        keras_distribution: run every worker on Keras 3's JAX backend with its
            ``keras.distribution`` coordinates (``KERAS_DISTRIBUTION_*``; a fresh coordinator
            port for every attempt), for `distcb.keras.jax_data_parallel` (process backend).
        gpus_per_worker: GPUs each worker gets (process backend: whole GPUs, given through
            ``CUDA_VISIBLE_DEVICES``; Ray: reserved per actor, fractions allowed).
        cpus_per_worker: CPUs each worker reserves (Ray; logical CPUs).
        threads_per_worker: TensorFlow/OpenMP threads per worker (process backend).
        resources_per_worker: custom Ray resources per worker actor.
        run_dir: the job's run directory (``DISTCB_RUN_DIR``), made absolute.
        env: extra environment variables for every worker.
        runtime_env: Ray runtime environment of every actor.
        ray_init: options for ``ray.init`` when no cluster is connected yet.
        output: where the process backend writes its workers' output (default stdout).
        progress: show the job's progress on stderr (`distcb.launch.progress`).
        warm_spares: worker processes kept started, TensorFlow and Keras imported, so that
            a restart skips that (process backend; `distcb.launch.spare_pool`): one per
            rank, for ranks 0 to warm_spares - 1. None: one per worker when
            ``max_restarts > 0``, else none; 0: none.
    """

    tf_config: bool = False
    keras_distribution: bool = False
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    resources_per_worker: Mapping[str, float] | None = None
    run_dir: str | None = None
    env: Mapping[str, str] | None = None
    runtime_env: Mapping[str, Any] | None = None
    ray_init: Mapping[str, Any] | None = None
    output: TextIO | None = None
    progress: bool = True
    warm_spares: int | None = None

    def __post_init__(self) -> None:
        for name in ("tf_config", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, received {getattr(self, name)!r}")
        if not isinstance(self.tf_config, bool):
            raise TypeError(f"tf_config must be a bool, received {self.tf_config!r}")
        if not isinstance(self.keras_distribution, bool):
            raise TypeError(
                f"keras_distribution must be a bool, received {self.keras_distribution!r}"
            )
        if self.tf_config and self.keras_distribution:
            raise ValueError(
                "tf_config=True (TensorFlow's MultiWorkerMirroredStrategy) and "
                "keras_distribution=True (Keras 3 on JAX) are two ways to train one model; "
                "choose one"
            )
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{name} must be a number >= 0 or None, received {value!r}")
        threads = self.threads_per_worker
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(
                f"threads_per_worker must be an int >= 1 or None, received {threads!r}"
            )
        for name in ("env", "resources_per_worker", "runtime_env", "ray_init"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a dict or None, received {type(value).__name__}")
        if self.env is not None:
            bad = [
                k for k, v in self.env.items() if not isinstance(k, str) or not isinstance(v, str)
            ]
            if bad:
                raise TypeError(f"env must map str to str; these keys do not: {bad}")
        spares = self.warm_spares
        if spares is not None and (isinstance(spares, bool) or not isinstance(spares, int)):
            raise TypeError(
                f"warm_spares must be an int >= 0 or None (one per worker when max_restarts "
                f"> 0), received {spares!r} of type {type(spares).__name__}"
            )
        if spares is not None and spares < 0:
            raise ValueError(
                f"warm_spares must be an int >= 0 (0: no spares) or None (one per worker when "
                f"max_restarts > 0), received {spares!r}"
            )
        if self.run_dir is not None and not isinstance(self.run_dir, str):
            raise TypeError(f"run_dir must be a str or None, received {self.run_dir!r}")

    @classmethod
    def for_backend(
        cls, backend: str, supported: frozenset[str], options: Mapping[str, Any]
    ) -> LaunchOptions:
        """Options from `distcb.run`'s keyword arguments, checked against `backend`'s.

        Raises:
            TypeError: an unknown option, or one `backend` does not support.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name in _ALIASES:
                warnings.warn(
                    f"{name}= is deprecated; use {_ALIASES[name]}=",
                    DeprecationWarning,
                    stacklevel=4,
                )
                name = _ALIASES[name]
            if name not in known:
                raise TypeError(
                    f"distcb.run() got an unknown option {name!r}; backend options are "
                    f"{sorted(known)}"
                )
            if name not in supported and value is not None and value is not False:
                raise TypeError(
                    f"backend={backend!r} does not support the option {name!r}; it supports "
                    f"{sorted(supported)}"
                )
            values[name] = value
        return cls(**values)


DEFAULT_OPTIONS = LaunchOptions()
