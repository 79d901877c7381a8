"""Ray Tune + distcb: ASHA over learning rate and width on the moons task, 2 workers per trial.

Each trial is one distcb job: two Keras 3 replicas (Ray actors, half a logical
CPU each) under one coordinator actor that runs EarlyStopping and
ModelCheckpoint once per epoch on the aggregated logs. The trial reports those
aggregated logs to Tune every epoch, with a Tune checkpoint whenever
ModelCheckpoint saved; ASHA stops the weak trials early, and their workers
stop with them. A restored trial resumes from its checkpoint.

    python examples/tune_asha.py [--epochs 40] [--storage runs/tune_asha]

Finishes in a few minutes on 2 cores (``ray.init(num_cpus=8)``: logical CPUs).
Inside a Ray job (``RAY_ADDRESS`` set, as in the KubeRay RayJob of
k8s/rayjob.yaml) it joins that cluster instead; ``--storage`` must then be
shared by every node (a ReadWriteMany volume, or an s3:// / gs:// URI).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import distcb.tune
from distcb.callbacks import EarlyStopping, ModelCheckpoint

CPUS_PER_WORKER = 0.5


def train(lr: float, width: int, epochs: int, data: tuple[Any, ...]) -> None:
    """One worker's replica (runs in a Ray actor)."""
    import keras

    import distcb.keras
    import distcb.tune

    context = distcb.worker_context()
    keras.utils.set_random_seed(1 + context.rank)
    train_x, train_y, test_x, test_y = data
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        loss="binary_crossentropy", optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"]
    )
    done = 0
    restored = distcb.tune.restored_checkpoint()
    if restored is not None and restored.path:
        model.load_weights(restored.path)
        done = restored.epoch + 1
    model.fit(
        train_x,
        train_y,
        validation_data=(test_x, test_y),
        epochs=max(epochs - done, 1),
        verbose=0,
        callbacks=[distcb.keras.WorkerCallback(samples=len(train_x), val_samples=len(test_x))],
    )


def trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one distcb job per trial."""
    from moons_data import split
    from ray import tune

    trial_dir = tune.get_context().get_trial_dir()
    best = os.path.join(trial_dir, "best.weights.h5")
    distcb.tune.run(
        train,
        num_workers=2,
        cpus_per_worker=CPUS_PER_WORKER,
        kwargs={
            "lr": config["lr"],
            "width": config["width"],
            "epochs": config["epochs"],
            "data": split(),
        },
        callbacks=[
            EarlyStopping(monitor="val_loss", patience=10),
            ModelCheckpoint(best, monitor="val_loss", save_best_only=True, save_weights_only=True),
        ],
        run_dir=trial_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--storage", default=os.path.abspath(os.path.join("runs", "tune_asha")))
    return parser


def main() -> None:
    options = build_parser().parse_args()

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    here = os.path.dirname(os.path.abspath(__file__))
    runtime_env = {"env_vars": {"PYTHONPATH": here, "TF_CPP_MIN_LOG_LEVEL": "3"}}
    if os.environ.get("RAY_ADDRESS"):  # a Ray job (KubeRay's RayJob): use that cluster
        ray.init(log_to_driver=False, runtime_env=runtime_env)
    else:  # logical CPUs: 4 trials x (0.5 for the trial + 2 x 0.5 for its workers) fit in 8
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    started = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(
            trainable, distcb.tune.placement(2, cpus_per_worker=CPUS_PER_WORKER, trial_cpus=0.5)
        ),
        param_space={
            "lr": tune.grid_search([0.01, 0.0003]),
            "width": tune.grid_search([256, 16]),
            "epochs": options.epochs,
        },
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=ASHAScheduler(max_t=options.epochs + 1, grace_period=5, reduction_factor=2),
            max_concurrent_trials=2,  # 2 cores: at most 4 TensorFlow workers at a time
        ),
        run_config=tune.RunConfig(storage_path=options.storage, verbose=0),
    )
    results = tuner.fit()
    wall_s = time.perf_counter() - started
    for result in sorted(results, key=lambda r: (r.config["lr"], r.config["width"])):
        frame = result.metrics_dataframe
        print(
            f"lr={result.config['lr']:<7g} width={result.config['width']:<4d} "
            f"epochs reported={len(frame):<3d} best val_loss={frame['val_loss'].min():.4f} "
            f"checkpoint={'yes' if result.checkpoint else 'no'}"
        )
    best = results.get_best_result()
    print(f"best: {best.config['lr']=} {best.config['width']=}  wall {wall_s:.1f} s")
    left = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("distcb-")
    ]
    print(f"distcb actors still alive: {left}")
    ray.shutdown()


if __name__ == "__main__":
    main()
