"""A deterministic distcb job on the JAX route for the exact-resume test: Keras 3 `fit` on
JAX across 2 processes (`keras_distribution=True`, `distcb.keras.jax_data_parallel`), with
dropout, EarlyStopping(restore_best_weights), ReduceLROnPlateau, ModelCheckpoint
(save_best_only) and CSVLogger on the coordinator (tests/helpers/resume_job.py's).

    python -m tests.helpers.jax_resume_job RUN_DIR [--faults JSON] [--max-restarts N]

prints one JSON line (``RESULT {...}``) with what the test compares. Faults fire once, as in
resume_job. Every worker process also leaves ``RUN_DIR/process-<rank>-<pid>.json`` with the
JAX coordination address it was given, so the test sees which processes each attempt ran.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from tests.helpers.resume_job import BATCH, EPOCHS, FAST, SAMPLES, SEED, callbacks, data


def train(run_dir: str, faults: list[dict[str, Any]]) -> None:
    import distcb
    import distcb.keras

    distcb.keras.jax_data_parallel()
    import keras

    ctx = distcb.worker_context()
    rank, world_size = ctx.rank, ctx.world_size
    with open(os.path.join(run_dir, f"process-{rank}-{os.getpid()}.json"), "w") as handle:
        json.dump({"jax": os.environ["KERAS_DISTRIBUTION_JOB_ADDRESSES"]}, handle)
    keras.utils.set_random_seed(SEED)
    # The whole job's data, the same in every process; each feeds every world_size-th sample.
    x, y = data(0, SAMPLES)
    vx, vy = data(50, SAMPLES // 2)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    mine = [f for f in faults if f["rank"] == rank]

    class Faults(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            for fault in mine:
                if (fault["epoch"], fault["batch"]) != (self.epoch, batch):
                    continue
                marker = os.path.join(run_dir, "faults", fault["name"])
                os.makedirs(os.path.dirname(marker), exist_ok=True)
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue  # fired in an earlier attempt
                os.kill(os.getpid(), getattr(signal, f"SIG{fault['signal']}"))

    worker = distcb.keras.WorkerCallback(
        samples=SAMPLES, val_samples=SAMPLES // 2, batch_size=BATCH, seed=SEED
    )
    model.fit(
        x[rank::world_size],
        y[rank::world_size],
        validation_data=(vx[rank::world_size], vy[rank::world_size]),
        epochs=EPOCHS,
        batch_size=BATCH // world_size,  # this process's share of each global batch
        shuffle=False,
        verbose=0,
        callbacks=[Faults(), worker],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--faults", default="[]")
    parser.add_argument("--max-restarts", type=int, default=0)
    options = parser.parse_args(argv)
    import distcb

    run_dir = os.path.abspath(options.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    chain = callbacks(run_dir)
    history = distcb.run(
        train,
        num_workers=2,
        keras_distribution=True,
        args=(run_dir, json.loads(options.faults)),
        callbacks=chain,
        run_dir=run_dir,
        max_restarts=options.max_restarts,
        config=distcb.Config(**FAST),
    )
    result = {
        "epochs": history.epoch,
        "history": history.history,
        "decisions": [
            [d["kind"], d["at"], d.get("made_by")] for d in getattr(history, "decisions", [])
        ],
        "stopped_epoch": chain[1].stopped_epoch,
        "best_epoch": chain[1].best_epoch,
        "reports": {str(r): rep for r, rep in history.worker_reports.items()},
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
