"""A tiny Keras 3 worker script for the misuse tests of `distcb launch` (issue 21).

    python misuse.py MODE
    raise     rank 1's own callback raises at epoch 1
    callback  trains normally; run with --callbacks :exploding_callbacks (a coordinator
              callback raises at the end of epoch 1)
    mismatch  rank 1 trains for one more epoch than the chief (the job is refused)
    forgot    rank 1 forgot WorkerCallback (it trains alone and exits 0)

It defines no `distcb_callbacks` on purpose: without --callbacks the launcher must say
that none were found.
"""

import sys

import numpy as np


def exploding_callbacks():
    from distcb.callbacks import Callback

    class Explode(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise ValueError("the callback exploded at epoch 1")

    return [Explode()]


if __name__ == "__main__":
    import keras

    import distcb
    import distcb.keras

    mode = sys.argv[1]
    rank = distcb.worker_context().rank
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")

    class Boom(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if mode == "raise" and rank == 1 and epoch == 1:
                raise RuntimeError("boom at epoch 1")

    callbacks = [Boom()]
    if not (mode == "forgot" and rank == 1):
        callbacks.append(distcb.keras.WorkerCallback(samples=len(x)))
    epochs = 4 if mode == "mismatch" and rank == 1 else 3
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks)
    print(f"misuse: rank {rank} fit returned", flush=True)
