"""TerminateOnNaN: one worker's NaN loss stops every worker at the same step."""

from __future__ import annotations

import math
from typing import Any

from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.io_utils import print_msg


class TerminateOnNaN(Callback):
    """Stop training when the aggregated batch ``loss`` is NaN or infinite.

    The aggregate is NaN as soon as one worker's loss is NaN (an infinite loss on
    one worker makes it infinite), so a diverged rank stops the whole job instead
    of hanging the others. Same arguments as ``keras.callbacks.TerminateOnNaN``.

    Args:
        raise_error: raise RuntimeError instead of stopping gracefully (Keras 3.13+);
            the job then fails with that error.
    """

    def __init__(self, raise_error: bool = False):
        super().__init__()
        if not isinstance(raise_error, bool):
            raise TypeError(f"TerminateOnNaN raise_error must be a bool, received {raise_error!r}.")
        self.raise_error = raise_error

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        try:
            value = float(loss)
        except (TypeError, ValueError):
            return
        if math.isfinite(value):
            return
        if self.raise_error:
            raise RuntimeError(
                f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. "
                "Terminating training immediately."
            )
        print_msg(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True

    def get_state(self) -> dict[str, Any]:
        """Nothing to keep: the callback has no counters."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
