"""Worker glue for Keras 3 and tf_keras: add `WorkerCallback()` to `model.fit`.

`PersistentValidation` (tf_keras only) is imported on first use: importing it
imports tf_keras, which would make ``WorkerCallback(flavour="auto")`` pick tf_keras
in a Keras 3 worker.
"""

from typing import Any

from distcb.keras.data_parallel import jax_data_parallel
from distcb.keras.worker_callback import WorkerCallback

__all__ = ["PersistentValidation", "WorkerCallback", "jax_data_parallel"]


def __getattr__(name: str) -> Any:
    if name == "PersistentValidation":
        from distcb.keras.validation import PersistentValidation

        return PersistentValidation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
