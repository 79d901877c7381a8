"""tests/helpers/resume_job.py's job as an ordinary training script, for `distcb launch`:

    distcb launch --nproc-per-node 2 --run-dir RUN_DIR [--max-restarts N] [--resume] \\
        tests/launch/scripts/resume_script.py RUN_DIR [FAULTS_JSON]

Each worker trains resume_job's deterministic Keras 3 replica (the faults fire as there);
the coordinator's callbacks come from `distcb_callbacks` below (loaded by the launcher)."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

from tests.helpers import resume_job  # noqa: E402


def distcb_callbacks() -> list[object]:
    from distcb.callbacks import LambdaCallback

    run_dir = os.path.abspath(sys.argv[1])
    marker = os.path.join(run_dir, "train-end")  # proof that on_train_end ran
    return [
        *resume_job.callbacks(run_dir),
        LambdaCallback(on_train_end=lambda logs: open(marker, "w").close()),
    ]


if __name__ == "__main__":
    faults = json.loads(sys.argv[2]) if len(sys.argv) > 2 else []
    resume_job.train(os.path.abspath(sys.argv[1]), faults)
