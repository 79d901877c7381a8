"""A training script for `distcb launch --keras-distribution`: the seed's moons model, Keras 3
`fit` on JAX across the launched processes; prints ``jax_fit result {json}`` per worker."""

import json
import os
import sys

import distcb
import distcb.keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples"))
from moons_data import split  # noqa: E402


def distcb_callbacks():  # the coordinator's callbacks (node 0 loads them)
    from distcb.callbacks import ReduceLROnPlateau

    return [ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=1.0)]


def main() -> None:
    # Here, not at import: the launcher imports this script for distcb_callbacks().
    distcb.keras.jax_data_parallel()  # before Keras builds anything
    import jax
    import keras

    context = distcb.worker_context()
    rank, world_size = context.rank, context.world_size
    keras.utils.set_random_seed(1)
    x, y, vx, vy = split()
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(500, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(
        x[rank::world_size],
        y[rank::world_size],
        batch_size=len(x) // world_size,
        validation_data=(vx[rank::world_size], vy[rank::world_size]),
        validation_batch_size=len(vx) // world_size,
        epochs=int(sys.argv[1]),
        shuffle=False,
        verbose=0,
        callbacks=[distcb.keras.WorkerCallback(samples=len(x), val_samples=len(vx))],
    )
    result = {
        "rank": rank,
        "processes": jax.process_count(),
        "backend": keras.backend.backend(),
        "loss": history.history["loss"],
        "final_learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
    }
    print("jax_fit result " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
