"""Keras's own callback tests, from the installed wheel, run against distcb's callbacks.

Nothing of Keras is copied here: one pytest subprocess collects
``site-packages/keras/src/callbacks/<module>_test.py`` and the harness
(harness/conftest.py) swaps each test module's ``callbacks`` for a module that
exports distcb's classes under Keras's names. The tests train real Keras 3
models in a plain, single-process ``fit``. What is expected of each test is in
expectations.py; a test fails here when a Keras test that should pass fails
(a new difference), when a listed difference passes (a stale list), or when a
listed test does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from expectations import EXPECTED_DIFFERENCES, KERAS_TEST_MODULES, NOT_APPLICABLE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = Path(__file__).parent
HARNESS = HERE / "harness"
REPO = HERE.parent.parent
RUN_LIMIT_S = 840


def keras_test_files() -> list[Path]:
    keras_callbacks = pytest.importorskip("keras.src.callbacks")
    folder = Path(keras_callbacks.__file__).parent
    return [folder / f"{module}_test.py" for module in KERAS_TEST_MODULES]


def run_peer(tmp_path: Path, impl: str) -> dict[str, Any]:
    """One pytest subprocess over Keras's callback test modules; its JSON report."""
    report = tmp_path / f"{impl}.json"
    env = dict(os.environ)
    # harness/ first: its conftest.py is the top-level `conftest` module of the run.
    path = [str(HARNESS), str(REPO), str(HERE), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_BACKEND="tensorflow",
        DISTCB_PEER_IMPL=impl,
        DISTCB_PEER_REPORT=str(report),
    )
    command = [sys.executable, "-m", "pytest", "-c", str(HARNESS / "peer.ini"), "-q"]
    start = time.monotonic()
    done = subprocess.run(
        [*command, *map(str, keras_test_files())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        check=False,
    )
    if not report.exists():
        raise AssertionError(
            f"the peer run wrote no report (exit {done.returncode}):\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(report.read_text())
    result["duration_s"] = time.monotonic() - start
    result["summary"] = done.stdout.strip().splitlines()[-1:] if done.stdout else []
    result["output_tail"] = (done.stdout + done.stderr)[-3000:]
    return result


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_peer(tmp_path_factory.mktemp("keras_peer"), "distcb")


def expected_outcome(test_id: str) -> str:
    if test_id in NOT_APPLICABLE:
        return "skipped"
    if test_id in EXPECTED_DIFFERENCES:
        return "failed"
    return "passed"


@pytest.mark.parametrize("module", KERAS_TEST_MODULES)
def test_keras_callback_tests_pass_against_distcb(peer: dict[str, Any], module: str) -> None:
    prefix = f"{module}_test.py::"
    outcomes = {k: v for k, v in peer["tests"].items() if k.startswith(prefix)}
    assert outcomes, f"no test collected from {module}_test.py:\n{peer['output_tail']}"
    assert "callbacks" in peer["swapped"][f"keras.src.callbacks.{module}_test"]
    problems = []
    for test_id, entry in sorted(outcomes.items()):
        expected, actual = expected_outcome(test_id), entry["outcome"]
        if actual == expected:
            continue
        if expected == "failed":
            problems.append(
                f"{test_id} passes now: remove it from EXPECTED_DIFFERENCES (stale entry: "
                f"{EXPECTED_DIFFERENCES[test_id]!r})"
            )
        else:
            detail = entry.get("error") or entry.get("reason") or ""
            problems.append(f"{test_id}: expected {expected}, got {actual}\n{detail}")
    assert not problems, "\n\n".join(problems)


def test_every_listed_test_exists(peer: dict[str, Any]) -> None:
    listed = set(NOT_APPLICABLE) | set(EXPECTED_DIFFERENCES)
    assert not set(NOT_APPLICABLE) & set(EXPECTED_DIFFERENCES)
    assert sorted(listed - set(peer["tests"])) == []
    assert all(
        reason.strip() for reason in [*NOT_APPLICABLE.values(), *EXPECTED_DIFFERENCES.values()]
    )
