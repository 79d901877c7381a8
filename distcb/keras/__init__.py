"""Worker glue for Keras 3 and tf_keras: add `WorkerCallback()` to `model.fit`."""

from distcb.keras.worker_callback import WorkerCallback

__all__ = ["WorkerCallback"]
