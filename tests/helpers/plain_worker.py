"""A worker started by hand (as a Kubernetes pod would be): DISTCB_* from the environment."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import distcb.keras  # noqa: E402


def make_callbacks():
    from distcb.callbacks import EarlyStopping

    return [EarlyStopping(monitor="loss", min_delta=10.0, patience=1)]


class MarkTraining(keras.callbacks.Callback):
    """Touches a file once training runs (the coordinator-lost test waits for it)."""

    def on_epoch_end(self, epoch, logs=None):
        path = os.environ.get("PLAIN_WORKER_MARK")
        if path and epoch == 0:
            open(path, "w").close()


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    epochs = int(os.environ.get("PLAIN_WORKER_EPOCHS", "20"))
    callbacks = [MarkTraining(), distcb.keras.WorkerCallback()]
    model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks)
