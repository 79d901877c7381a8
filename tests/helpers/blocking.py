"""A coordinator callback that holds the engine (``--callbacks tests.helpers.blocking:...``)."""

from __future__ import annotations

import os
import time

from distcb.callbacks import Callback


class BlockOnFirstBatch(Callback):
    """On the first batch end: says so in ``$BLOCK_DIR/blocked``, then waits until
    ``$BLOCK_DIR/release`` exists (a slow callback: the engine handles nothing meanwhile)."""

    decides_on_batch = False

    def on_train_batch_end(self, batch, logs=None):
        if batch != 0:
            return
        directory = os.environ["BLOCK_DIR"]
        open(os.path.join(directory, "blocked"), "w").close()
        while not os.path.exists(os.path.join(directory, "release")):
            time.sleep(0.02)


def block_on_first_batch():
    return [BlockOnFirstBatch()]
