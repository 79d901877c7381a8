"""The seed's moons example on 2 Keras 3 replicas under one distcb coordinator.

Each worker trains its own replica (its own seed) on the seed's data; the
coordinator aggregates their logs and runs EarlyStopping and ModelCheckpoint
once, so both replicas stop at the same epoch and only the chief writes the
checkpoint. Then the best model is loaded with Keras and evaluated, as in the seed.

    python examples/moons_replicas.py [--epochs 4000] [--workers 2] [--run-dir runs/moons_replicas]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import distcb
from distcb.callbacks import EarlyStopping, ModelCheckpoint


def train(epochs: int) -> None:
    import keras
    from moons_data import split

    import distcb.keras

    context = distcb.worker_context()
    keras.utils.set_random_seed(1 + context.rank)
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
        verbose=0,
        callbacks=[distcb.keras.WorkerCallback(samples=len(train_x), val_samples=len(test_x))],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--run-dir", default=os.path.join("runs", "moons_replicas"))
    options = parser.parse_args()
    os.makedirs(options.run_dir, exist_ok=True)
    best_path = os.path.join(options.run_dir, "best_model.keras")
    # This process needs Keras only at the end, to load the best model: import it
    # meanwhile (the coordinator itself needs no Keras).
    keras_import = threading.Thread(target=importlib.import_module, args=("keras",), daemon=True)
    keras_import.start()
    started = time.perf_counter()
    history = distcb.run(
        train,
        num_workers=options.workers,
        kwargs={"epochs": options.epochs},
        run_dir=options.run_dir,
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", verbose=1, patience=options.patience),
            ModelCheckpoint(
                best_path, monitor="val_accuracy", mode="max", verbose=1, save_best_only=True
            ),
        ],
    )
    wall_s = time.perf_counter() - started
    epochs_run = len(history.epoch)
    print(f"epochs={epochs_run} wall_s={wall_s:.1f} ms_per_epoch={wall_s / epochs_run * 1e3:.1f}")
    ends = {rank: report["epochs_run"] for rank, report in history.worker_reports.items()}
    print(f"epochs run by each worker: {ends}")
    print(f"val_loss: {json.dumps(history.history['val_loss'])}")

    keras_import.join()
    import keras
    from moons_data import split

    train_x, train_y, test_x, test_y = split()
    saved_model = keras.models.load_model(best_path)
    _, train_acc = saved_model.evaluate(train_x, train_y, verbose=0)
    _, test_acc = saved_model.evaluate(test_x, test_y, verbose=0)
    print(f"Train: {train_acc:.3f}, Test: {test_acc:.3f}")


if __name__ == "__main__":
    main()
