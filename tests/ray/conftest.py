"""One local Ray cluster for the whole session (starting one takes 4-8 s here)."""

from __future__ import annotations

import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS_DIR = os.path.join(os.path.dirname(HERE), "workers")
for path in (HERE, WORKERS_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def ray_cluster():
    """`ray`, connected to a local cluster of 8 logical CPUs (2 real cores here)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Worker processes inherit this environment: let them import the test modules.
    paths = [HERE, WORKERS_DIR, os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def distcb_actors_alive(ray) -> list[str]:
    """Names of live distcb actors (all of ours are named distcb-...)."""
    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["name"].startswith("distcb-")
    )


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
    """The JSON each rank of tests/workers/worker_fns.py wrote into the run directory."""
    import json

    def read(run_dir, num_workers):
        out = []
        for rank in range(num_workers):
            with open(os.path.join(run_dir, f"rank-{rank}.json")) as handle:
                out.append(json.load(handle))
        return out

    return read
