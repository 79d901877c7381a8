"""The seed's `LossHistory` callback, unmodified, running on the distcb coordinator.

The seed subclasses `keras.callbacks.Callback` and appends `logs.get('loss')` in
`on_batch_end`. Under distcb that class runs once, on the coordinator, and sees
the batch losses aggregated over every worker. The seed's data set is MNIST;
nothing may be downloaded here, so the workers train on random 784-feature
inputs of 10 classes with the seed's model (Dense(10) + softmax, rmsprop).

    python examples/loss_history.py [--workers 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

import distcb


class LossHistory(keras.callbacks.Callback):
    def on_train_begin(self, logs={}):  # noqa: B006 - the seed's own code, kept as written
        self.losses = []

    def on_batch_end(self, batch, logs={}):  # noqa: B006
        self.losses.append(logs.get("loss"))


def train(epochs: int, samples: int) -> None:
    import numpy as np
    from keras.layers import Activation, Dense
    from keras.models import Sequential

    import distcb.keras

    rank = distcb.worker_context().rank
    rng = np.random.default_rng(rank)
    x_train = rng.random((samples, 784), dtype="float32")
    y_train = keras.utils.to_categorical(rng.integers(0, 10, samples), 10)
    model = Sequential()
    model.add(keras.Input((784,)))
    model.add(Dense(10, kernel_initializer="uniform"))
    model.add(Activation("softmax"))
    model.compile(loss="categorical_crossentropy", optimizer="rmsprop")
    model.fit(
        x_train,
        y_train,
        batch_size=128,
        epochs=epochs,
        verbose=0,
        callbacks=[distcb.keras.WorkerCallback(samples=samples, batch_size=128)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1024)
    options = parser.parse_args()
    history = LossHistory()
    distcb.run(
        train,
        num_workers=options.workers,
        callbacks=[history],
        kwargs={"epochs": options.epochs, "samples": options.samples},
    )
    print(f"{len(history.losses)} aggregated batch losses")
    print(history.losses)


if __name__ == "__main__":
    main()
