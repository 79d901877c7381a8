"""The Keras peer run's plugin, loaded as the top-level module ``conftest``.

Keras's callback tests come from the installed wheel; two things they rely on
live in Keras's repository, not in the wheel, and are provided here at their
smallest: ``conftest.skip_if_backend`` (imported by remote_monitor_test) and the
``requires_trainable_backend`` marker (the backend here, TensorFlow, trains, so
the marker only has to be known).

After collection, every collected Keras test module's global ``callbacks`` (the
``keras.src.callbacks`` module) is swapped for ``keras_callbacks_shim``, which
exports distcb's classes under Keras's names, and every Keras callback class a
module imported by name (``from keras.src.callbacks import TerminateOnNaN``) is
swapped for distcb's. Keras's own ``fit`` keeps using Keras's modules: only the
test modules see distcb. With ``DISTCB_PEER_IMPL=keras`` nothing is swapped
(Keras's own callbacks: a check of the harness).

Tests listed in ``expectations.NOT_APPLICABLE`` are skipped with their reason.
Each test's outcome is written as JSON to ``$DISTCB_PEER_REPORT``.
"""

from __future__ import annotations

import json
import os
import types
from typing import Any

import pytest

IMPL = os.environ.get("DISTCB_PEER_IMPL", "distcb")
_ids: dict[str, str] = {}  # pytest node id -> test_id()
_outcomes: dict[str, dict[str, str]] = {}
_swapped: dict[str, list[str]] = {}  # test module -> the names swapped for distcb's


def skip_if_backend(given_backend: str, reason: str) -> Any:
    """Keras's repository helper: skip a test under one backend."""
    from keras.src.backend import backend

    return pytest.mark.skipif(backend() == given_backend, reason=reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_trainable_backend: the test trains (all of this run's backends do)"
    )


def test_id(item: pytest.Item) -> str:
    """`<module file>::<class>::<test>`, independent of where site-packages is."""
    return "::".join([item.path.name, *item.nodeid.split("::")[1:]])


def _swap(module: types.ModuleType) -> list[str]:
    import keras.src.callbacks as keras_callbacks
    import keras_callbacks_shim as shim

    swapped = []
    for name, value in list(vars(module).items()):
        if value is keras_callbacks:
            setattr(module, name, shim)
            swapped.append(name)
        elif isinstance(value, type) and value is getattr(keras_callbacks, name, None):
            replacement = shim.REPLACED.get(name)
            if replacement is not None:
                setattr(module, name, replacement)
                swapped.append(name)
    return swapped


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from expectations import NOT_APPLICABLE

    modules = {item.module for item in items if getattr(item, "module", None) is not None}
    if IMPL == "distcb":
        for module in modules:
            _swapped[module.__name__] = _swap(module)
            if "callbacks" not in _swapped[module.__name__]:
                raise pytest.UsageError(
                    f"{module.__name__} does not import keras.src.callbacks as `callbacks`; the "
                    "peer harness cannot swap in distcb's callbacks."
                )
    elif IMPL != "keras":
        raise pytest.UsageError(f"DISTCB_PEER_IMPL must be 'distcb' or 'keras', not {IMPL!r}.")
    for item in items:
        _ids[item.nodeid] = test_id(item)
        _outcomes[test_id(item)] = {"outcome": "not run"}
        reason = NOT_APPLICABLE.get(test_id(item))
        if reason is not None and IMPL == "distcb":
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _outcomes.setdefault(_ids.get(report.nodeid, report.nodeid), {})
    if report.when == "setup":
        entry["outcome"] = "passed"  # until a later phase says otherwise
    if report.skipped:
        entry["outcome"] = "skipped"
        entry["reason"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    elif report.failed:
        entry["outcome"] = "failed"
        entry.setdefault("error", report.longreprtext[-4000:])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("DISTCB_PEER_REPORT")
    if path:
        with open(path, "w") as file:
            report = {"impl": IMPL, "swapped": _swapped, "tests": _outcomes}
            json.dump(report, file, indent=1, sort_keys=True)
