"""The environment of one worker, built in one place for every backend."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from distcb.launch.keras_distribution import keras_distribution_env
from distcb.worker.cluster import tf_config_json
from distcb.worker.context import WorkerContext

THREAD_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def worker_env(
    context: WorkerContext,
    *,
    extra: Mapping[str, str] | None = None,
    tf_cluster: Sequence[str] | None = None,
    threads: int | None = None,
    gpus: Sequence[int] | None = None,
    keras_distribution: str | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """What to set in a worker's environment: ``(variables, defaults)``.

    `variables` override what the worker inherits (the ``DISTCB_*`` variables,
    ``TF_CONFIG`` when `tf_cluster` lists the workers' collective addresses,
    ``CUDA_VISIBLE_DEVICES`` for `gpus`, Keras 3's JAX backend and its
    ``keras.distribution`` coordinates when `keras_distribution` names rank 0's
    coordination address); `defaults` only fill in what is unset (quiet TensorFlow,
    `threads` per worker, gloo CPU collectives).
    """
    variables = dict(extra or {})
    variables.update(context.to_env())
    if context.run_dir:
        variables["DISTCB_RUN_DIR"] = os.path.abspath(context.run_dir)
    if tf_cluster is not None:
        variables["TF_CONFIG"] = tf_config_json(context.rank, tf_cluster)
    if gpus is not None:
        variables["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    defaults = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if keras_distribution is not None:
        jax_variables, jax_defaults = keras_distribution_env(
            context.rank, context.world_size, keras_distribution
        )
        variables.update(jax_variables)
        defaults.update(jax_defaults)
    if threads is not None:
        defaults.update({name: str(threads) for name in THREAD_VARIABLES})
    return variables, defaults


def apply_env(variables: Mapping[str, str], defaults: Mapping[str, str]) -> None:
    """Set a `worker_env` in this process (a worker actor does this)."""
    os.environ.update(variables)
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
