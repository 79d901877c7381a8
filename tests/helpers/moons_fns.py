"""The seed's moons model as a `train_fn` (module level: the process backend imports it)."""

from __future__ import annotations

import os
import sys

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples"
)


def moons_keras3(epochs: int, seed: int = 1) -> None:
    """The seed's model (Dense(500) relu, sigmoid, Adam) on the seed's 30/70 split, Keras 3,
    one full batch per epoch, validation on the test split; seeded."""
    import keras

    import distcb.keras

    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    from moons_data import split

    keras.utils.set_random_seed(seed)
    train_x, train_y, test_x, test_y = split()
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(500, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(
        train_x,
        train_y,
        validation_data=(test_x, test_y),
        epochs=epochs,
        batch_size=len(train_x),
        verbose=0,
        callbacks=[
            distcb.keras.WorkerCallback(
                flavour="keras3", samples=len(train_x), val_samples=len(test_x)
            )
        ],
    )
