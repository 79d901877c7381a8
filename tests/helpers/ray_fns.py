"""Training functions run by Ray worker actors in these tests (module level: importable)."""

from __future__ import annotations

import json
import os
import time


def killed_mid_epoch(epochs: int, kill_epoch: int, kill_batch: int, batch_size: int = 8):
    """tiny_keras3's model; rank 1 has Ray kill its own actor at (kill_epoch, kill_batch)."""
    import keras
    import ray

    import distcb
    import distcb.keras
    from tests.helpers.worker_fns import data

    ctx = distcb.worker_context()
    keras.utils.set_random_seed(7)
    x, y = data(ctx.rank)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy")
    steps: list[list[int]] = []

    class Killer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps.append([])

        def on_train_batch_begin(self, batch, logs=None):
            if ctx.rank == 1 and len(steps) - 1 == kill_epoch and batch == kill_batch:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                time.sleep(60)

        def on_train_batch_end(self, batch, logs=None):
            steps[-1].append(batch)

    worker = distcb.keras.WorkerCallback(samples=len(x), batch_size=batch_size)
    ended = None
    try:
        model.fit(
            x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[Killer(), worker]
        )
    except SystemExit as exc:  # the job failed elsewhere: fit ends with JobFailed (code 1)
        ended = exc.code
    with open(os.path.join(ctx.run_dir, f"rank-{ctx.rank}.json"), "w") as handle:
        json.dump({"steps": steps, "job_error": worker.job_error, "exit_code": ended}, handle)
    if ended is not None:
        raise SystemExit(ended)


FAST_TUNE = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 10.0, "stop_timeout_s": 5.0}


def tune_worker(
    lr: float, width: int, epochs: int, fail_marker: str | None = None, fail_epoch: int = -1
):
    """A small classifier; resumes from distcb.tune.restored_checkpoint(); rank 1 may fail
    once at (absolute) `fail_epoch`, leaving `fail_marker` behind."""
    import keras

    import distcb
    import distcb.keras
    import distcb.tune
    from tests.helpers.worker_fns import data

    ctx = distcb.worker_context()
    keras.utils.set_random_seed(7 + ctx.rank)
    x, y = data(ctx.rank)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(lr), loss="binary_crossentropy", metrics=["accuracy"]
    )
    restored = distcb.tune.restored_checkpoint()
    done = 0
    if restored is not None:
        model.load_weights(restored.path)
        done = restored.epoch + 1
    with open(os.path.join(ctx.run_dir, f"start-{ctx.rank}-{os.getpid()}.json"), "w") as handle:
        json.dump({"restored_epoch": None if restored is None else restored.epoch}, handle)

    class FailOnce(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if (
                ctx.rank == 1
                and fail_marker
                and done + epoch == fail_epoch
                and not os.path.exists(fail_marker)
            ):
                open(fail_marker, "w").close()
                raise RuntimeError(f"failing once at epoch {fail_epoch}")

    worker = distcb.keras.WorkerCallback(samples=len(x), val_samples=len(x), batch_size=16)
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs - done,
        batch_size=16,
        verbose=0,
        callbacks=[FailOnce(), worker],
    )


def tune_trainable(config):
    """A Tune function trainable: one distcb job of 2 workers per trial."""
    from ray import tune

    import distcb
    import distcb.tune
    from distcb.callbacks import ModelCheckpoint

    trial_dir = os.path.join(config["out"], tune.get_context().get_trial_id())
    os.makedirs(trial_dir, exist_ok=True)
    checkpoint = ModelCheckpoint(
        os.path.join(trial_dir, "model.weights.h5"), monitor="loss", save_weights_only=True
    )
    history = distcb.tune.run(
        tune_worker,
        num_workers=2,
        cpus_per_worker=0.5,
        kwargs={
            "lr": config["lr"],
            "width": config["width"],
            "epochs": config["epochs"],
            "fail_marker": config.get("fail_marker"),
            "fail_epoch": config.get("fail_epoch", -1),
        },
        callbacks=[checkpoint],
        run_dir=trial_dir,
        config=distcb.Config(**FAST_TUNE),
    )
    with open(os.path.join(trial_dir, "history.json"), "w") as handle:
        json.dump({"epoch": history.epoch, "history": history.history}, handle)


def tune_thread_trainable(config):
    """A Tune function trainable whose one-worker distcb job runs in the trial process."""
    from ray import tune

    import distcb
    import distcb.tune
    from distcb.callbacks import ModelCheckpoint

    trial_dir = os.path.join(config["out"], tune.get_context().get_trial_id())
    os.makedirs(trial_dir, exist_ok=True)
    checkpoint = ModelCheckpoint(
        os.path.join(trial_dir, "model.weights.h5"), monitor="loss", save_weights_only=True
    )
    history = distcb.tune.run(
        tune_worker,
        num_workers=1,
        backend="thread",
        kwargs={"lr": config["lr"], "width": config["width"], "epochs": config["epochs"]},
        callbacks=[checkpoint],
        run_dir=trial_dir,
        config=distcb.Config(**FAST_TUNE),
    )
    with open(os.path.join(trial_dir, "history.json"), "w") as handle:
        json.dump({"epoch": history.epoch, "history": history.history, "pid": os.getpid()}, handle)


def tune_journal_trainable(config):
    """A Tune trainable whose trial, when Tune restores it, goes on from the distcb journal:
    `run_dir` outlives the trial process and `resume=True` (no journal yet: a fresh start).
    The job is tests/helpers/resume_job's deterministic one; its faults fire once."""
    import distcb
    import distcb.tune
    from tests.helpers import resume_job

    run_dir = config["run_dir"]
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "attempts"), "a") as handle:
        handle.write(f"{os.getpid()}\n")
    chain = resume_job.callbacks(run_dir)
    history = distcb.tune.run(
        resume_job.train,
        num_workers=2,
        cpus_per_worker=0.5,
        args=(run_dir, config["faults"]),
        callbacks=chain,
        run_dir=run_dir,
        resume=True,
        config=distcb.Config(**resume_job.FAST),
    )
    stop = chain[1]
    with open(os.path.join(run_dir, "result.json"), "w") as handle:
        json.dump(
            {
                "epoch": history.epoch,
                "history": history.history,
                "stopped_epoch": stop.stopped_epoch,
                "best_epoch": stop.best_epoch,
            },
            handle,
        )
