"""Keras 3 `fit` synchronous across processes on the JAX backend: `jax_data_parallel()`.

The route Keras recommends for Keras 3 across processes (its `fit` fails under
TensorFlow's MultiWorkerMirroredStrategy, keras-team/keras#20585): the JAX backend,
``keras.distribution.initialize()`` (``jax.distributed``) and ``DataParallel`` over
every process's devices. Each process feeds its share of every global batch; Keras
assembles the global batch (`jax.make_array_from_process_local_data`), so the loss,
the gradients and the metrics are those of one step over the whole batch.

The launcher gives each worker its coordinates (``distcb.run(...,
keras_distribution=True)``, ``distcb launch --keras-distribution``); the training
function calls `jax_data_parallel()` before it builds the model, and adds
`WorkerCallback` to `fit` as on any route: the coordinator's callbacks decide once,
every process applies the decision at the same step, and the chief (rank 0) alone
writes model files.
"""

from __future__ import annotations

import os
from typing import Any

from distcb.worker.context import worker_context

# Set by the launcher (`distcb.launch.keras_distribution`); read by keras.distribution.
ENV_JOB_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"

_LAUNCH_HINT = (
    "start the job with distcb.run(..., keras_distribution=True) or "
    "`distcb launch --keras-distribution`"
)


def jax_data_parallel() -> Any:
    """Join this worker to the job's JAX processes and set ``keras.distribution.DataParallel``
    over the devices of all of them; returns that distribution.

    Call it first in the training function, before any model or variable exists. Each
    process then passes `fit` its own shard of the data and the per-process batch size
    (the global batch size / world size); taking every ``world_size``-th sample
    (``x[rank::world_size]``) gives every global batch exactly the samples a single
    process's batch would hold. Every shard must have the same length.

    Raises:
        RuntimeError: Keras does not run on JAX (``KERAS_BACKEND`` was not ``jax`` when
            Keras was first imported).
        ValueError: the job's JAX coordinates are missing or do not match its workers.
    """
    context = worker_context()
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"jax_data_parallel needs Keras's JAX backend, but Keras runs on "
            f"{keras.backend.backend()!r}: {_LAUNCH_HINT} (it sets KERAS_BACKEND=jax), and "
            "import keras only inside the training function"
        )
    import jax

    if context.world_size > 1 and not jax.distributed.is_initialized():
        declared = os.environ.get(ENV_NUM_PROCESSES)
        if declared is None or os.environ.get(ENV_PROCESS_ID) is None:
            raise ValueError(
                f"worker rank {context.rank} of {context.world_size} has no JAX coordinates "
                f"({ENV_NUM_PROCESSES}, {ENV_PROCESS_ID} are unset): {_LAUNCH_HINT}"
            )
        if declared != str(context.world_size) or os.environ[ENV_PROCESS_ID] != str(context.rank):
            raise ValueError(
                f"the JAX coordinates (process {os.environ[ENV_PROCESS_ID]} of {declared}) do "
                f"not match this worker (rank {context.rank} of {context.world_size}): "
                f"{_LAUNCH_HINT}"
            )
        keras.distribution.initialize()
    if jax.process_count() != context.world_size:
        raise ValueError(
            f"JAX runs {jax.process_count()} process(es), the job has {context.world_size} "
            f"workers: {_LAUNCH_HINT}"
        )
    distribution = keras.distribution.DataParallel(
        devices=jax.devices(),
        # Each worker already feeds its own shard; Keras's auto-sharding takes tf.data only.
        auto_shard_dataset=False,
    )
    keras.distribution.set_distribution(distribution)
    return distribution
