"""The seed's moons run in one plain tf_keras process: the reference distributed runs must equal.

    python moons_reference.py OUT.json --epochs E [--patience P] [--checkpoint PATH]
        [--keras3 | --jax]

Writes {"history": {...}, "epochs": n, "train_accuracy_of_saved": a, "test_accuracy_of_saved":
b}: fit's per-epoch logs, how many epochs ran, and (with --checkpoint) the saved best model's
accuracy on the training and the validation set (the seed's "Train: a, Test: b"). Same model,
seed, data and compile as examples/moons.py (tf_keras, the seed's Keras 2 API), with
--keras3 as examples/moons_sync_keras3.py, with --jax as examples/moons_jax.py (Keras 3 on
its JAX backend, one process, no distribution). Tests start it with `Reference`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples")


class Reference:
    """This script in a subprocess (so that it runs while a distributed job does)."""

    def __init__(
        self,
        tmp_path,
        epochs: int,
        patience: int | None = None,
        keras3: bool = False,
        jax: bool = False,
    ):
        self.out = tmp_path / "reference.json"
        command = [
            sys.executable,
            os.path.abspath(__file__),
            str(self.out),
            "--epochs",
            str(epochs),
        ]
        suffix = ".keras" if keras3 or jax else ".h5"
        command += ["--checkpoint", str(tmp_path / f"reference_best{suffix}")]
        command += ["--keras3"] if keras3 else []
        command += ["--jax"] if jax else []
        if patience is not None:
            command += ["--patience", str(patience)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:  # the test failed before waiting for it
            self.process.kill()
            self.process.communicate()

    def result(self) -> dict:
        output, _ = self.process.communicate(timeout=900)
        assert self.process.returncode == 0, output[-3000:]
        with open(self.out) as handle:
            return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--checkpoint")
    parser.add_argument("--keras3", action="store_true")
    parser.add_argument("--jax", action="store_true")
    options = parser.parse_args()
    if options.jax:  # before Keras is first imported
        os.environ["KERAS_BACKEND"] = "jax"
        options.keras3 = True

    sys.path.insert(0, EXAMPLES)
    import importlib

    from moons_data import split

    keras = importlib.import_module("keras" if options.keras3 else "tf_keras")
    keras.utils.set_random_seed(1)
    train_x, train_y, test_x, test_y = split()
    first = (
        [keras.Input((2,)), keras.layers.Dense(500, activation="relu")]
        if options.keras3
        else [keras.layers.Dense(500, input_dim=2, activation="relu")]
    )
    model = keras.Sequential([*first, keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    callbacks = []
    if options.patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=options.patience)
        )
    if options.checkpoint:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                options.checkpoint, monitor="val_accuracy", mode="max", save_best_only=True
            )
        )
    history = model.fit(
        train_x,
        train_y,
        validation_data=(test_x, test_y),
        epochs=options.epochs,
        verbose=0,
        callbacks=callbacks,
    )
    result = {"history": history.history, "epochs": len(history.history["loss"])}
    if options.checkpoint:
        saved = keras.models.load_model(options.checkpoint)
        result["train_accuracy_of_saved"] = saved.evaluate(train_x, train_y, verbose=0)[1]
        result["test_accuracy_of_saved"] = saved.evaluate(test_x, test_y, verbose=0)[1]
    with open(options.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
