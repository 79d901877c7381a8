"""Which Keras a worker runs: Keras 3 or tf_keras (the Keras 2 API)."""

from __future__ import annotations

import sys
from typing import Any

_CLASSES: dict[str, type] = {}


def worker_class(base: type, flavour: str) -> type:
    """The WorkerCallback subclass that also derives from the flavour's Keras Callback."""
    if flavour == "auto":
        flavour = "tf_keras" if "tf_keras" in sys.modules else "keras3"
    if flavour not in ("keras3", "tf_keras"):
        raise ValueError(f"flavour must be 'auto', 'keras3' or 'tf_keras', received {flavour!r}")
    if flavour not in _CLASSES:
        if flavour == "tf_keras":
            import tf_keras

            keras_base = tf_keras.callbacks.Callback
        else:
            import keras

            keras_base = keras.callbacks.Callback
        _CLASSES[flavour] = type(base.__name__, (base, keras_base), {"_distcb_flavour": flavour})
    return _CLASSES[flavour]


def flavour_of(callback: Any) -> str:
    return str(getattr(callback, "_distcb_flavour", "keras3"))
