"""Coordinator callbacks with the Keras API: swap ``keras.callbacks.X`` for ``distcb.callbacks.X``.

Each callback lives in its own module; they are imported on first use so that
importing distcb stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from distcb.callbacks.base import Callback
from distcb.callbacks.base_logger import BaseLogger
from distcb.callbacks.callback_list import CallbackList
from distcb.callbacks.history import History

_LAZY = {
    "CSVLogger": "csv_logger",
    "EarlyStopping": "early_stopping",
    "LambdaCallback": "lambda_callback",
    "LearningRateScheduler": "learning_rate_scheduler",
    "ModelCheckpoint": "model_checkpoint",
    "ProgbarLogger": "progbar_logger",
    "ReduceLROnPlateau": "reduce_lr_on_plateau",
    "RemoteMonitor": "remote_monitor",
    "TensorBoard": "tensorboard",
    "TerminateOnNaN": "terminate_on_nan",
}

__all__ = ["BaseLogger", "Callback", "CallbackList", "History", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distcb.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distcb.callbacks.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
