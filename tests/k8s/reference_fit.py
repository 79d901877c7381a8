"""The single-process reference for examples/k8s_train.py: the same model, seed and data, one
full batch per epoch, plain tf_keras with Keras's own EarlyStopping. Prints the History as JSON.

    python tests/k8s/reference_fit.py [k8s_train.py arguments]
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples"
)
sys.path.insert(0, EXAMPLES)

import tf_keras as keras  # noqa: E402
from k8s_train import EARLY_STOPPING, SEED, build_model, parse_args  # noqa: E402
from moons_data import split  # noqa: E402

if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    keras.utils.set_random_seed(SEED)
    train_x, train_y, _, _ = split()
    model = build_model(keras, options.lr)
    history = model.fit(
        train_x,
        train_y,
        batch_size=len(train_x),
        epochs=options.epochs,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(**EARLY_STOPPING)],
    )
    print(json.dumps({"loss": [float(v) for v in history.history["loss"]]}))
