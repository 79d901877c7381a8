"""The JAX route's worker environment and `jax_data_parallel`'s refusals (no training here:
tests/launch/test_jax_route.py and test_jax_resume.py run real JAX jobs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from distcb.launch.env import worker_env
from distcb.launch.keras_distribution import AttemptPorts, keras_distribution_env
from distcb.worker.context import WorkerContext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_each_worker_gets_the_jax_backend_and_its_coordinates():
    envs = [
        worker_env(WorkerContext(rank=rank, world_size=2), keras_distribution="127.0.0.1:4567")
        for rank in range(2)
    ]
    for rank, (variables, defaults) in enumerate(envs):
        assert variables["KERAS_BACKEND"] == "jax"
        assert variables["KERAS_DISTRIBUTION_JOB_ADDRESSES"] == "127.0.0.1:4567"
        assert variables["KERAS_DISTRIBUTION_NUM_PROCESSES"] == "2"
        assert variables["KERAS_DISTRIBUTION_PROCESS_ID"] == str(rank)
        assert variables["DISTCB_RANK"] == str(rank)  # the same rank for distcb and JAX
        assert defaults["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"  # a user's choice wins
    plain, _ = worker_env(WorkerContext(rank=0, world_size=2))
    assert not any(name.startswith(("KERAS_", "JAX_")) for name in plain)


def test_bad_coordinates_are_refused():
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), received 2"):
        keras_distribution_env(2, 2, "127.0.0.1:1")
    with pytest.raises(ValueError, match="world_size must be an int >= 1, received 0"):
        keras_distribution_env(0, 0, "127.0.0.1:1")
    with pytest.raises(ValueError, match="coordinator_address must be 'host:port', received 'x'"):
        keras_distribution_env(0, 1, "x")


def test_every_attempt_gets_its_own_coordination_port():
    ports = AttemptPorts()
    first = ports.address(0)
    assert ports.address(0) == first  # every rank of one attempt: the same service
    addresses = {ports.address(attempt) for attempt in range(5)}
    assert len(addresses) == 5
    assert all(a.startswith("127.0.0.1:") for a in addresses)


def refusal(env: dict[str, str]) -> str:
    code = "import distcb.keras\ndistcb.keras.jax_data_parallel()\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}, **env},
        cwd=ROOT,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_jax_data_parallel_refuses_another_backend_and_missing_coordinates():
    base = {"PYTHONPATH": ROOT, "DISTCB_RANK": "1", "DISTCB_WORLD_SIZE": "2"}
    assert refusal({**base, "KERAS_BACKEND": "tensorflow"}) == (
        "RuntimeError: jax_data_parallel needs Keras's JAX backend, but Keras runs on "
        "'tensorflow': start the job with distcb.run(..., keras_distribution=True) or "
        "`distcb launch --keras-distribution` (it sets KERAS_BACKEND=jax), and import keras "
        "only inside the training function"
    )
    assert refusal({**base, "KERAS_BACKEND": "jax"}) == (
        "ValueError: worker rank 1 of 2 has no JAX coordinates (KERAS_DISTRIBUTION_NUM_PROCESSES"
        ", KERAS_DISTRIBUTION_PROCESS_ID are unset): start the job with distcb.run(..., "
        "keras_distribution=True) or `distcb launch --keras-distribution`"
    )
    mismatch = {"KERAS_DISTRIBUTION_NUM_PROCESSES": "3", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert refusal({**base, "KERAS_BACKEND": "jax", **mismatch}).startswith(
        "ValueError: the JAX coordinates (process 1 of 3) do not match this worker (rank 1 of 2)"
    )
