"""One `JobSpec`: built once by `distcb.run`, taken whole by every backend's `launch`."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

import distcb
from distcb.callbacks import History
from distcb.launch.api import BACKENDS, _prepare
from distcb.launch.job_spec import JobSpec
from distcb.launch.options import LaunchOptions
from distcb.protocol.config import Config


def train(value: int, *, scale: int = 1) -> int:
    return value * scale


def test_every_backend_launch_takes_one_job_spec():
    for name, module_name in BACKENDS.items():
        if name == "ray":
            pytest.importorskip("ray")
        launch = importlib.import_module(module_name).launch
        parameters = list(inspect.signature(launch).parameters.values())
        assert [p.name for p in parameters] == ["job"], name
        assert parameters[0].annotation in (JobSpec, "JobSpec"), name


def test_run_builds_the_spec_once_and_hands_it_to_the_backend(monkeypatch):
    seen: list[JobSpec] = []

    async def launch(job: JobSpec) -> History:
        seen.append(job)
        return History()

    module = importlib.import_module(BACKENDS["thread"])
    monkeypatch.setattr(module, "launch", launch)
    callback = History()
    kwargs = {"scale": 3}
    distcb.run(
        train, num_workers=2, callbacks=[callback], args=[2], kwargs=kwargs, backend="thread"
    )
    (job,) = seen
    assert job.callbacks == (callback,)
    assert job.callbacks[0] is callback  # the caller's object: its state is the caller's
    assert job.call() == 6
    assert job.config == Config()
    assert job.options == LaunchOptions()
    kwargs["scale"] = 100  # the spec took a copy
    assert job.call() == 6


def test_the_spec_is_frozen_and_copies_what_it_is_given():
    args = [1]
    job = JobSpec.build(train, num_workers=1, args=args, callbacks=[])
    args.append(2)
    assert job.args == (1,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.num_workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("arguments", "error", "says"),
    [
        ({"train_fn": 3}, TypeError, "train_fn must be callable"),
        ({"num_workers": 0}, ValueError, "num_workers must be an int >= 1"),
        ({"num_workers": True}, ValueError, "num_workers must be an int >= 1"),
        ({"kwargs": [1]}, TypeError, "kwargs must be a dict"),
        ({"config": {}}, TypeError, "config must be a distcb.Config"),
        ({"max_restarts": -1}, ValueError, "max_restarts must be an int >= 0"),
        ({"resume": 1}, TypeError, "resume must be a bool"),
        ({"max_restarts": 1}, ValueError, "need run_dir"),
        ({"resume": True}, ValueError, "need run_dir"),
    ],
)
def test_a_bad_argument_is_named_by_run_as_by_the_spec(arguments, error, says):
    given = {"train_fn": train, "num_workers": 1, **arguments}
    with pytest.raises(error, match=says):
        JobSpec.build(**given)
    with pytest.raises(error, match=says):
        _prepare(**given, backend="thread")


def test_restarts_with_a_run_dir_make_a_resumable_spec(tmp_path):
    job = JobSpec.build(
        train, num_workers=1, max_restarts=2, options=LaunchOptions(run_dir=str(tmp_path))
    )
    assert job.resumable
    assert not JobSpec.build(train, num_workers=1).resumable
