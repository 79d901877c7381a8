"""`PersistentValidation`: what `fit(validation_data=...)` logs, over one distributed iterator.

Under MultiWorkerMirroredStrategy, tf_keras's `fit` runs its validation with
`evaluate`, which builds a new distributed iterator every epoch; each one costs
collective setup across the workers (300-650 ms per epoch for a tiny model on
this project's 2-core machine). This callback builds one iterator for the
whole run and evaluates with the model's own compiled test step
(`make_test_function`), so `val_loss` and every compiled metric are computed by
Keras's code: whatever was given to `compile`, sample weights included.

Sharding: the validation set is cut into per-replica batches; batch k goes to
replica ``k % num_replicas`` at step ``k // num_replicas``, so every sample is
evaluated exactly once per epoch, by one replica. Replicas left without a batch
at the last step get an empty one (it adds nothing to any metric), so every
replica runs the same number of steps and no collective waits forever.
Keras's metrics are sums reduced over all replicas, so the logged values are
the full validation set's, whatever the sharding.

Requires tf_keras (the Keras 2 API); importing this module imports TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

__all__ = ["PersistentValidation", "batch_layout"]


def batch_layout(num_batches: int, num_replicas: int, steps_multiple: int = 1) -> list[list[int]]:
    """Which batch each replica evaluates at each step: ``layout[replica][step]``.

    Batch k goes to replica ``k % num_replicas`` at step ``k // num_replicas``; -1 marks
    an empty batch. Steps are padded to a multiple of `steps_multiple` (the model's
    `steps_per_execution`), so every replica runs the same number of steps.
    """
    for name, value in (
        ("num_batches", num_batches),
        ("num_replicas", num_replicas),
        ("steps_multiple", steps_multiple),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, received {value!r}")
    steps = math.ceil(num_batches / num_replicas)
    steps = math.ceil(steps / steps_multiple) * steps_multiple
    return [
        [k if (k := step * num_replicas + replica) < num_batches else -1 for step in range(steps)]
        for replica in range(num_replicas)
    ]


class PersistentValidation(tf_keras.callbacks.Callback):
    """Adds to the epoch logs exactly the ``val_*`` values `fit(validation_data=...)` would.

    Give `validation_data` to this callback instead of to `fit`, and put it before
    every callback that reads ``val_*`` (`distcb.keras.WorkerCallback` included):
    callbacks see the logs in list order.

    Args:
        validation_data: ``(x, y)`` or ``(x, y, sample_weight)`` of arrays, or a
            finite `tf.data.Dataset` of such batches (every worker must build the
            same one; its batches are dealt to the replicas in turn).
        batch_size: global batch size for arrays (as `fit`'s `validation_batch_size`:
            each replica evaluates ``ceil(batch_size / num_replicas)`` samples per
            step). Default 32. Must be None for a dataset (its own batches are used).
        validation_freq: validate every `validation_freq` epochs (int), or at the
            1-based epochs listed, as in `fit`.

    Unlike `fit`'s validation, the test hooks of other callbacks
    (`on_test_begin`, `on_test_batch_end`, ...) are not called.
    """

    def __init__(
        self,
        validation_data: Any,
        *,
        batch_size: int | None = None,
        validation_freq: int | Collection[int] = 1,
    ):
        super().__init__()
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None, received {batch_size!r}")
        if isinstance(validation_freq, bool) or not (
            (isinstance(validation_freq, int) and validation_freq >= 1)
            or (
                isinstance(validation_freq, Collection)
                and all(isinstance(e, int) and not isinstance(e, bool) for e in validation_freq)
            )
        ):
            raise ValueError(
                "validation_freq must be an int >= 1 or a collection of 1-based epochs, "
                f"received {validation_freq!r}"
            )
        self.validation_freq = validation_freq
        if isinstance(validation_data, tf.data.Dataset):
            if batch_size is not None:
                raise ValueError(
                    "batch_size must be None when validation_data is a tf.data.Dataset "
                    f"(its own batches are evaluated), received batch_size={batch_size!r}"
                )
            self._dataset = validation_data
            self._arrays = None
        else:
            self._dataset = None
            self._arrays = _as_arrays(validation_data)
        self.batch_size = 32 if batch_size is None else batch_size
        self.steps: int | None = None  # steps per validation, once training began
        self.distributed_dataset: Any = None  # what the replicas read, once training began
        self._iterator: Any = None
        self._validate: Any = None
        self._built_for: tuple[Any, int] | None = None

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if getattr(model, "autotune_steps_per_execution", False):
            raise ValueError(
                "PersistentValidation cannot follow steps_per_execution='auto' (the step "
                "count changes during fit); compile with an int steps_per_execution."
            )
        spe = getattr(model, "steps_per_execution", None)
        steps_per_execution = 1 if spe is None else int(tf_keras.backend.get_value(spe))
        strategy = model.distribute_strategy
        self._iterator = iter(self.distribute(strategy, steps_per_execution))
        test_function = model.make_test_function()
        calls = self.steps // steps_per_execution if self.steps else 0

        def validate(iterator: Any) -> dict[str, Any]:
            # What `evaluate` does for one epoch of validation, with Keras's own pieces.
            model.reset_metrics()
            for _ in tf.range(calls) if not model.run_eagerly else range(calls):
                test_function(iterator)
            return model.get_metrics_result()

        # One compiled call per epoch: under MultiWorkerMirroredStrategy every eager
        # call (each metric reset, each read) is a collective round of its own.
        self._validate = validate if model.run_eagerly else tf.function(validate)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._should_eval(epoch):
            return
        if logs is not None and any(key.startswith("val_") for key in logs):
            raise ValueError(
                "the epoch logs already hold validation results "
                f"({sorted(k for k in logs if k.startswith('val_'))}): give the validation data "
                "to PersistentValidation or to fit(validation_data=...), not both."
            )
        results = self.evaluate()
        if logs is not None:
            logs.update({"val_" + name: value for name, value in results.items()})

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._iterator = None  # a later fit builds a new one (its model may differ)
        self._validate = None

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, Any]:
        """One pass over the validation set with the model's compiled test step.

        Returns the logs `model.evaluate(..., return_dict=True)` returns (names
        without the ``val_`` prefix): Python floats, numpy arrays for non-scalar metrics.
        """
        if self._iterator is None or self._validate is None:
            raise RuntimeError("PersistentValidation.evaluate() runs between train begin and end")
        with self.model.distribute_strategy.scope():
            results = self._validate(self._iterator)
        return {name: _to_python(value) for name, value in results.items()}

    def _should_eval(self, epoch: int) -> bool:
        if isinstance(self.validation_freq, int):
            return (epoch + 1) % self.validation_freq == 0
        return epoch + 1 in self.validation_freq

    def distribute(self, strategy: Any, steps_per_execution: int = 1) -> Any:
        """The distributed dataset the replicas read (built once per strategy).

        Training builds it at `on_train_begin`; call it earlier to look at the
        shards: ``strategy.experimental_local_results(batch)`` for each of `steps`
        batches of ``iter(dataset)`` is what this worker's replicas evaluate.
        """
        if self._built_for is not None and self._built_for == (strategy, steps_per_execution):
            return self.distributed_dataset
        replicas = int(strategy.num_replicas_in_sync)
        if self._arrays is not None:
            num_samples = _num_samples(self._arrays)
            per_replica = max(1, math.ceil(self.batch_size / replicas))
            num_batches = math.ceil(num_samples / per_replica)
            batches = tf.data.Dataset.from_tensor_slices(self._arrays).batch(per_replica)
        else:
            assert self._dataset is not None
            batches = self._dataset
            num_batches = _count_batches(batches)
        layout = batch_layout(num_batches, replicas, steps_per_execution)
        steps = len(layout[0])
        empty = _empty_batch(batches.element_spec)
        padded = batches.concatenate(
            tf.data.Dataset.from_tensors(empty).repeat(steps * replicas - num_batches)
        )

        def per_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
            # Batch k goes to replica k % replicas (batch_layout); this pipeline feeds
            # `local` consecutive replicas, one element each per step, in turn.
            local = replicas // context.num_input_pipelines
            pipeline = context.input_pipeline_id
            mine = padded.enumerate().filter(lambda k, _: (k % replicas) // local == pipeline)
            dataset = mine.map(lambda _, batch: batch).repeat()
            return dataset.apply(
                tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY)
            )

        self.distributed_dataset = strategy.distribute_datasets_from_function(per_pipeline)
        self.steps = steps
        self._built_for = (strategy, steps_per_execution)
        return self.distributed_dataset


def _as_arrays(data: Any) -> tuple[Any, ...]:
    if not isinstance(data, tuple | list) or len(data) not in (2, 3):
        raise TypeError(
            "validation_data must be (x, y), (x, y, sample_weight) or a tf.data.Dataset, "
            f"received {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, tuple | list) else "")
        )

    def convert(value: Any) -> Any:
        array = np.asarray(value)
        if array.ndim == 0:
            raise ValueError(f"validation arrays need a batch dimension, received {value!r}")
        if np.issubdtype(array.dtype, np.floating):  # as fit's data adapter does
            array = array.astype(tf_keras.backend.floatx())
        return array

    arrays = tuple(tf.nest.map_structure(convert, part) for part in data)
    sizes = {len(a) for a in tf.nest.flatten(arrays)}
    if len(sizes) != 1:
        raise ValueError(
            f"validation arrays must have one length, received lengths {sorted(sizes)}"
        )
    if sizes == {0}:
        raise ValueError("validation_data is empty (0 samples)")
    return arrays


def _num_samples(arrays: tuple[Any, ...]) -> int:
    return len(tf.nest.flatten(arrays)[0])


def _count_batches(dataset: tf.data.Dataset) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("validation_data must be a finite dataset, received an infinite one")
    if cardinality == tf.data.UNKNOWN_CARDINALITY:  # count it once
        cardinality = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    if cardinality < 1:
        raise ValueError("validation_data is an empty dataset")
    return cardinality


def _empty_batch(element_spec: Any) -> Any:
    def empty(spec: Any) -> tf.Tensor:
        if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None or spec.shape.rank < 1:
            raise TypeError(
                "validation batches must be dense tensors with a batch dimension, "
                f"received an element of spec {spec!r}"
            )
        inner = spec.shape[1:]
        if not inner.is_fully_defined():
            raise TypeError(
                f"validation batches need known non-batch dimensions, received shape {spec.shape}"
            )
        return tf.zeros([0, *inner.as_list()], dtype=spec.dtype)

    return tf.nest.map_structure(empty, element_spec)


def _to_python(value: Any) -> Any:
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array
