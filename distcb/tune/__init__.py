"""Ray Tune: a distcb job per trial, its aggregated epoch metrics reported to Tune.

    from ray import tune
    import distcb.tune

    def trainable(config):                       # a Tune function trainable
        distcb.tune.run(train_fn, num_workers=2, cpus_per_worker=0.5,
                        kwargs={"lr": config["lr"]}, callbacks=[ModelCheckpoint(...)])

    tuner = tune.Tuner(
        tune.with_resources(trainable, distcb.tune.placement(2, cpus_per_worker=0.5)),
        param_space={"lr": tune.loguniform(1e-3, 1e-1)},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=ASHAScheduler()),
    )

Resources: the trial process only waits; the workers are Ray actors the trial
starts. Reserve them with the trial: ``tune.with_resources(trainable,
distcb.tune.placement(num_workers, cpus_per_worker=...))`` (a
`PlacementGroupFactory` of one bundle for the trial and one per worker; Tune
schedules the trial's child actors into it). Without it the worker actors
compete with other trials for the cluster's free CPUs and may wait forever.
Pass the same ``cpus_per_worker`` / ``gpus_per_worker`` to `run`.

Reporting: every epoch's aggregated logs (exactly the History row, plus
``epoch``) go to ``tune.report`` from the trial process, where Tune's session
lives. A report waits for the chief to carry out that epoch's decisions, so
when ModelCheckpoint saved a file at that epoch, the report carries a Tune
checkpoint: a directory with the saved file(s) and ``distcb_checkpoint.json``
(epoch, file names, metrics). The job runs on while Tune digests a report;
the coordinator waits for Tune's answer on epoch e at the end of epoch e + 1
at the latest (training is never more than one epoch ahead of Tune). After
a worker failed, epochs merged from the survivors alone are not reported.

Stopping: when a scheduler or stopper ends the trial, ``tune.report`` raises
SystemExit. The coordinator then sets ``stop_training`` at the end of the
epoch in flight, so every worker stops at that common point and
``on_train_end`` runs; `run` waits for that (at most
`Config.stop_timeout_s`), kills every actor of the job and re-raises the
SystemExit. Tune reclaims a stopped trial's process and placement group
within tens of milliseconds, which kills the job's actors with it (Ray
ties an actor's life to the process that created it): no actor outlives its
trial either way, but a graceful ending is only guaranteed when it is fast.
Workers of a stopped trial may therefore run one epoch past its last report.

Resuming: when Tune restores a trial (``FailureConfig(max_failures=...)``,
``Tuner.restore``, PBT), `run` fetches ``tune.get_checkpoint()`` into a local
directory and passes it to the workers as ``DISTCB_TUNE_CHECKPOINT``;
``distcb.tune.restored_checkpoint()`` in `train_fn` returns its files and the
last epoch it covers, so `train_fn` can load the weights and train the epochs
left. Epoch numbers in distcb restart at 0 (Keras ``initial_epoch`` is not
supported by the coordinator yet); the ``epoch`` reported to Tune continues
from the checkpoint. The directory must be readable by the workers (same
node, or shared storage). To resume exactly instead, callbacks' state included,
pass `run` a ``run_dir`` that outlives the trial process (shared storage) and
``resume=True``: a restored trial then goes on from the distcb journal there
(tests/tune/test_tune.py, a worker SIGKILLed mid-epoch: History, CSV, stopped
epoch and weights equal the uninterrupted trial's).

Layout: `trial` (the trial process: `run`, reporting), `observer` (inside the
coordinator actor: pairs epochs with their saves), `checkpoint` (staging and
restoring Tune checkpoints), `resources` (`placement`).
"""

from __future__ import annotations

from distcb.tune.checkpoint import (
    CHECKPOINT_INFO,
    ENV_CHECKPOINT,
    RestoredCheckpoint,
    restored_checkpoint,
)
from distcb.tune.resources import placement
from distcb.tune.trial import run

__all__ = [
    "CHECKPOINT_INFO",
    "ENV_CHECKPOINT",
    "RestoredCheckpoint",
    "placement",
    "restored_checkpoint",
    "run",
]
