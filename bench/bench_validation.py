"""Benchmark: per-epoch validation cost under MultiWorkerMirroredStrategy (issue 9).

Two local worker processes (tf_keras + MultiWorkerMirroredStrategy over
loopback, one intra-op and one inter-op thread each, as `examples/moons.py`
runs them) train the seed's moons model on its data. Each worker runs, in
interleaved rounds, fits of EPOCHS epochs:

* ``keras_numpy``: ``fit(x, y, validation_data=(vx, vy))``, the plain way (the
  training iterator is rebuilt every epoch too);
* ``keras_val``: a persistent training iterator (repeated dataset,
  ``steps_per_epoch=1``) and ``fit(..., validation_data=(vx, vy))``;
* ``persistent``: the same training and ``distcb.keras.PersistentValidation``;
* ``none``: the same training, no validation (the floor).

A callback records the wall time of each epoch end; the figure per fit is the
median epoch time (the first epochs, which trace functions, are skipped).
Validation cost = configuration minus ``none`` in the same round.

Standalone: ``python bench/bench_validation.py`` prints the Markdown section.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 60
SKIP = 10
ROUNDS = 3
CONFIGS = ["keras_numpy", "keras_val", "persistent", "none"]


def worker(rank: int, ports: list[int], out_path: str) -> None:
    """One worker process: every configuration, ROUNDS times, in the same order as its peer."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from distcb.worker.cluster import tf_config_json

    os.environ["TF_CONFIG"] = tf_config_json(rank, [f"127.0.0.1:{port}" for port in ports])
    import time

    import tensorflow as tf
    import tf_keras as keras
    from moons_data import split

    from distcb.keras import PersistentValidation

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    train_x, train_y, test_x, test_y = split()

    def build() -> keras.Model:
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = keras.Sequential(
                [
                    keras.layers.Dense(500, input_dim=2, activation="relu"),
                    keras.layers.Dense(1, activation="sigmoid"),
                ]
            )
            model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        return model

    def worker_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((train_x, train_y))
        data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.batch(context.get_per_replica_batch_size(len(train_x))).repeat()

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # type: ignore[type-arg]
            self.ends.append(time.perf_counter())

    results: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for _ in range(ROUNDS):
        for config in CONFIGS:
            model = build()
            clock = Clock()
            if config == "keras_numpy":
                model.fit(
                    train_x,
                    train_y,
                    validation_data=(test_x, test_y),
                    epochs=EPOCHS,
                    verbose=0,
                    callbacks=[clock],
                )
            else:
                train_data = strategy.distribute_datasets_from_function(worker_data)
                callbacks: list = [clock]  # type: ignore[type-arg]
                kwargs = {}
                if config == "keras_val":
                    kwargs["validation_data"] = (test_x, test_y)
                elif config == "persistent":
                    callbacks.insert(0, PersistentValidation((test_x, test_y), batch_size=70))
                model.fit(
                    train_data,
                    steps_per_epoch=1,
                    epochs=EPOCHS,
                    verbose=0,
                    callbacks=callbacks,
                    **kwargs,
                )
            gaps = [b - a for a, b in zip(clock.ends[SKIP:], clock.ends[SKIP + 1 :], strict=False)]
            results[config].append(statistics.median(gaps) * 1e3)
    with open(out_path, "w") as handle:
        json.dump(results, handle)


def run() -> dict[str, list[float]]:
    from distcb.launch.process import free_ports

    ports = free_ports(2)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="3",
            OMP_NUM_THREADS="1",
            TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="1",
            PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        )
        paths = [os.path.join(tmp, f"rank-{rank}.json") for rank in range(2)]
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(rank), json.dumps(ports), paths[rank]],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for rank in range(2)
        ]
        try:
            for child in children:
                if child.wait(timeout=1800) != 0:
                    raise RuntimeError(f"benchmark worker exited with {child.returncode}")
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        with open(paths[0]) as handle:
            data: dict[str, list[float]] = json.load(handle)
    return data


def main() -> str:
    results = run()
    median = {config: statistics.median(values) for config, values in results.items()}
    floor = median["none"]
    labels = {
        "keras_numpy": "`fit(x, y, validation_data=(vx, vy))` (numpy, Keras's own iterators)",
        "keras_val": "persistent training iterator + `fit(validation_data=(vx, vy))`",
        "persistent": "persistent training iterator + `PersistentValidation((vx, vy))`",
        "none": "persistent training iterator, no validation (floor)",
    }
    lines = [
        "## Validation under MultiWorkerMirroredStrategy (issue 9)",
        "",
        "Command: `python bench/bench_validation.py` (also run by `make bench`).",
        "",
        "The seed's moons model on 2 local tf_keras workers (MultiWorkerMirroredStrategy on "
        "loopback, 1 intra-op + 1 inter-op thread each), 30 training samples (15 + 15 per "
        "step), 70 validation samples. Median epoch time per fit of "
        f"{EPOCHS} epochs (the first {SKIP} skipped), median over {ROUNDS} interleaved rounds; "
        "validation cost = configuration minus the floor.",
        "",
        "| configuration | ms/epoch (median) | per round | validation ms/epoch |",
        "|---|---:|---|---:|",
    ]
    for config in CONFIGS:
        rounds = ", ".join(f"{v:.0f}" for v in results[config])
        cost = "" if config == "none" else f"{median[config] - floor:.0f}"
        lines.append(f"| {labels[config]} | {median[config]:.0f} | {rounds} | {cost} |")
    keras_cost = median["keras_val"] - floor
    ours = median["persistent"] - floor
    lines += [
        "",
        f"`PersistentValidation` costs {ours:.0f} ms per epoch against {keras_cost:.0f} ms for "
        "`fit`'s own validation under the same strategy "
        f"({keras_cost / max(ours, 1e-9):.1f}x less); the values it logs are Keras's "
        "(tests/launch/test_validation.py).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4])
    else:
        print(main())
