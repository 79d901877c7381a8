"""Shared fixtures: the environment, one Ray cluster per session, worker reports."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from tests.helpers.ray_cluster import distcb_actors_alive  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_cluster():
    """`ray`, connected to a local cluster of 8 logical CPUs (2 real cores here)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Worker processes inherit this environment: let them import the test helpers.
    paths = [ROOT, os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def no_leaked_actors(ray_cluster):
    """Fails a test that leaves a distcb actor alive (waits a little for ray.kill to land)."""
    yield
    deadline = time.monotonic() + 10.0
    alive = distcb_actors_alive(ray_cluster)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = distcb_actors_alive(ray_cluster)
    assert alive == [], f"actors left behind: {alive}"


@pytest.fixture
def read_reports():
    """The JSON each rank of tests/helpers/worker_fns.py wrote into the run directory."""

    def read(run_dir, num_workers):
        out = []
        for rank in range(num_workers):
            with open(os.path.join(run_dir, f"rank-{rank}.json")) as handle:
                out.append(json.load(handle))
        return out

    return read
