"""Coordinator callbacks for the attack tests (``--callbacks tests.helpers.attacks:...``)."""

from __future__ import annotations

import os
import threading
import time

from distcb.callbacks import Callback


class BatchObserver(Callback):
    """Has a batch hook that never decides: the coordinator asks for batch logs, and a rank
    may run `Config.max_ahead_steps` ahead of the merged step."""

    decides_on_batch = False

    def on_train_batch_end(self, batch, logs=None):
        pass


def batch_observer():
    return [BatchObserver()]


def fd_hog():
    """No callbacks; a thread that, once ``$HOG_DIR/go`` exists, opens files until the
    process's open-file limit is reached, says so in ``$HOG_DIR/full``, and closes them all
    once ``$HOG_DIR/release`` exists: the coordinator then runs into the limit itself."""
    directory = os.environ["HOG_DIR"]

    def exists(name: str) -> bool:
        return os.path.exists(os.path.join(directory, name))

    def hog() -> None:
        while not exists("go"):
            time.sleep(0.02)
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        os.close(held.pop())  # room for the marker, then full again
        open(os.path.join(directory, "full"), "w").close()
        held.append(os.open(os.devnull, os.O_RDONLY))
        while not exists("release"):
            time.sleep(0.02)
        for fd in held:
            os.close(fd)

    threading.Thread(target=hog, name="fd-hog", daemon=True).start()
    return []
