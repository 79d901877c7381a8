"""PersistentValidation logs what fit(validation_data=...) logs, from shards that cover the
validation set exactly once: under MultiWorkerMirroredStrategy with 2 real workers, and
with 2 replicas fed by one input pipeline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from distcb.keras.validation import batch_layout

HELPERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
# Measured: PersistentValidation and Keras (evaluate, fit's validation) agree exactly in most
# cases and within 1.21e-7 relative otherwise (val_loss of the sparse configuration: the
# same float32 sums in another order); counts (accuracies) are exact.
REL = 1e-6


def test_batch_layout_gives_every_batch_to_one_replica_and_equal_steps():
    for batches in range(1, 30):
        for replicas in range(1, 6):
            for multiple in (1, 2, 3):
                layout = batch_layout(batches, replicas, multiple)
                steps = {len(row) for row in layout}
                assert len(steps) == 1
                (count,) = steps
                assert count % multiple == 0
                assert count == math.ceil(math.ceil(batches / replicas) / multiple) * multiple
                given = [k for row in layout for k in row if k >= 0]
                assert sorted(given) == list(range(batches))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 0), "num_replicas must be an int >= 1, received 0"),
        ((0, 2), "num_batches must be an int >= 1, received 0"),
        ((3, 2, True), "steps_multiple must be an int >= 1, received True"),
    ],
)
def test_batch_layout_rejects_bad_counts(args, message):
    with pytest.raises(ValueError, match=message):
        batch_layout(*args)


def test_bad_validation_data_is_refused_early():
    np = pytest.importorskip("numpy")
    tf = pytest.importorskip("tensorflow")
    from distcb.keras import PersistentValidation

    x = np.zeros((4, 2), "float32")
    with pytest.raises(TypeError, match=r"\(x, y\), \(x, y, sample_weight\).*received dict"):
        PersistentValidation({"x": x})
    with pytest.raises(ValueError, match=r"one length, received lengths \[3, 4\]"):
        PersistentValidation((x, np.zeros(3)))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1 or None, received 0"):
        PersistentValidation((x, x), batch_size=0)
    with pytest.raises(ValueError, match="validation_freq must be an int >= 1"):
        PersistentValidation((x, x), validation_freq=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, x)).batch(2)
    with pytest.raises(ValueError, match="batch_size must be None when validation_data is a"):
        PersistentValidation(dataset, batch_size=2)


def assert_shards(shards, replicas_by_worker, samples=71):
    """Every sample once, in one replica's batch; every replica runs the same steps."""
    seen = []
    for worker in shards:
        assert worker["steps"] == len(worker["per_step"]) == shards[0]["steps"]
        for step in worker["per_step"]:
            assert len(step) == replicas_by_worker
            for batch in step:
                seen.extend(batch)
    assert sorted(seen) == list(range(samples))  # disjoint shards, whole set


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-7)


@pytest.mark.slow
def test_under_multi_worker_mirrored_strategy_it_logs_what_fit_logs(tmp_path):
    import distcb
    from distcb import Config
    from tests.helpers.validation_fns import CONFIGS, EPOCHS, compare_with_keras

    distcb.run(
        compare_with_keras,
        num_workers=2,
        tf_config=True,
        threads_per_worker=1,
        args=(str(tmp_path),),
        # Only the last fit joins the coordinator; the ones before it take a while.
        config=Config(join_timeout_s=600),
    )
    reports = []
    for rank in range(2):
        with open(tmp_path / f"validation-{rank}.json") as handle:
            reports.append(json.load(handle))
    # What each worker received: 71 samples in batches of 8 per replica, 9 batches over
    # 2 replicas: 5 steps, the last one empty on worker 1.
    for source in ("arrays", "dataset"):
        shards = [r["shards"][source] for r in reports]
        print(f"validation shards per worker ({source}):", [s["per_step"] for s in shards])
        assert_shards(shards, replicas_by_worker=1)
        assert shards[0]["steps"] == 5
        assert shards[1]["per_step"][-1] == [[]]
    for name in CONFIGS:
        ours = reports[0][name]["persistent"]
        keras_fit = reports[0][name]["keras"]
        # The same keys as fit's own validation, val_loss and every compiled metric.
        keys = sorted(k for k in keras_fit["history"] if k.startswith("val_"))
        assert sorted(k for k in ours["history"] if k.startswith("val_")) == keys, name
        assert len(keys) >= 2
        for epoch in range(EPOCHS):
            for key in keys:
                logged = ours["history"][key][epoch]
                evaluated = ours["evaluate"][epoch][key[len("val_") :]]
                assert close(logged, evaluated), (name, epoch, key, logged, evaluated)
                assert close(logged, keras_fit["history"][key][epoch]), (name, epoch, key)
        # Both workers log the same global values.
        assert reports[1][name]["persistent"]["history"] == ours["history"]
    # steps_per_execution=3: the 2 steps of the regression set are padded to 3.
    assert reports[0]["mse_sample_weights"]["persistent"]["steps"] == 3


@pytest.mark.slow
def test_one_pipeline_feeding_two_replicas(tmp_path):
    out = tmp_path / "local.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
    done = subprocess.run(
        [sys.executable, os.path.join(HELPERS, "validation_fns.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["replicas"] == 2
    for source in ("arrays", "dataset"):
        assert_shards([report["shards"][source]], replicas_by_worker=2)
        for key, value in report["evaluate"].items():
            assert close(report[source][key], value), (source, key, report)


def test_distcb_keras_imports_tf_keras_only_for_persistent_validation():
    # A Keras 3 worker imports distcb.keras; tf_keras in sys.modules would make
    # WorkerCallback(flavour="auto") pick tf_keras there.
    code = (
        "import sys, distcb.keras\n"
        "assert 'tf_keras' not in sys.modules, 'imported too early'\n"
        "assert 'PersistentValidation' in distcb.keras.__all__\n"
        "from distcb.keras import PersistentValidation\n"
        "assert PersistentValidation.__module__ == 'distcb.keras.validation'\n"
        "assert 'tf_keras' in sys.modules\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
