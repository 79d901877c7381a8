"""A `train_fn` defined in a `__main__` that has no file (a notebook cell, ``python -c``, a
script on stdin) runs in real worker processes: it travels pickled by value (cloudpickle),
with the globals it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 3

# Defined in the child's __main__ (fed on stdin) and, for the reference, in this test.
SOURCE = """
import numpy as np

SCALE = 0.5  # a global of __main__: it must travel with the function


def make_data(rank):
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(48, 3)).astype("float32") * SCALE
    return x, (x.sum(axis=1) > 0).astype("float32")


def fit(rank, epochs, callbacks):
    import keras

    keras.utils.set_random_seed(3)
    x, y = make_data(rank)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(
        x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks
    )
    return history.history["loss"]


def train(epochs):
    import distcb
    import distcb.keras

    rank = distcb.worker_context().rank
    fit(rank, epochs, [distcb.keras.WorkerCallback(samples=48)])
"""

SCRIPT = (
    SOURCE
    + """
import json
import os
import __main__
import distcb

assert train.__module__ == "__main__"
assert not os.path.isfile(getattr(__main__, "__file__", "")), "this __main__ has a file"
history = distcb.run(train, num_workers=2, kwargs={"epochs": EPOCHS})
print("HISTORY " + json.dumps(history.history))
"""
).replace("EPOCHS", str(EPOCHS))


def test_a_function_from_a_main_without_a_file_trains_in_worker_processes():
    done = subprocess.run(
        [sys.executable, "-"],  # the script comes on stdin: __main__ has no file
        input=SCRIPT,
        capture_output=True,
        text=True,
        timeout=240,
        cwd="/",  # nothing of the test's directory to import the function from
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("HISTORY "))
    history = json.loads(line[len("HISTORY ") :])

    # The reference: the same code, plain Keras, one process per rank's data.
    namespace: dict = {}
    exec(compile(SOURCE, "<reference>", "exec"), namespace)
    per_rank = [namespace["fit"](rank, EPOCHS, []) for rank in range(2)]
    expected = np.mean(np.asarray(per_rank, dtype=np.float64), axis=0)  # equal samples
    assert history["loss"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert per_rank[0] != per_rank[1]  # the ranks really trained on different data
