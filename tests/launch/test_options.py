"""Backend options: one frozen LaunchOptions; what a backend does not support is a TypeError
that says so, before anything starts."""

from __future__ import annotations

import io

import pytest

import distcb
from distcb.launch.options import LaunchOptions


def train() -> None:  # never runs: every call below is refused first
    raise AssertionError("the job started")


@pytest.mark.parametrize(
    ("backend", "option", "value"),
    [
        ("process", "runtime_env", {"pip": ["x"]}),
        ("process", "cpus_per_worker", 2),
        ("process", "ray_init", {"num_cpus": 2}),
        ("ray", "threads_per_worker", 2),
        ("ray", "output", io.StringIO()),
        ("ray", "keras_distribution", True),
        ("thread", "keras_distribution", True),
    ],
)
def test_an_option_the_backend_does_not_support_is_a_type_error(backend, option, value):
    with pytest.raises(
        TypeError, match=rf"backend='{backend}' does not support the option '{option}'"
    ):
        distcb.run(train, num_workers=2, backend=backend, **{option: value})


def test_an_unknown_option_is_a_type_error_naming_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown option 'num_worker'.*'gpus_per_worker'"):
        distcb.run(train, num_workers=2, num_worker=3)


def test_old_spellings_warn_and_mean_the_new_ones():
    with pytest.warns(
        DeprecationWarning, match="num_gpus_per_worker= is deprecated; use gpus_per_worker="
    ):
        options = LaunchOptions.for_backend(
            "ray", frozenset({"gpus_per_worker"}), {"num_gpus_per_worker": 0.5}
        )
    assert options.gpus_per_worker == 0.5


def test_values_are_checked_when_the_options_are_made():
    with pytest.raises(
        ValueError, match="gpus_per_worker must be a number >= 0 or None, received -1"
    ):
        LaunchOptions(gpus_per_worker=-1)
    with pytest.raises(
        ValueError, match="threads_per_worker must be an int >= 1 or None, received 0"
    ):
        LaunchOptions(threads_per_worker=0)
    with pytest.raises(TypeError, match="env must map str to str; these keys do not: \\['A'\\]"):
        LaunchOptions(env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="tf_config must be a bool, received 'yes'"):
        LaunchOptions(tf_config="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keras_distribution must be a bool, received 1"):
        LaunchOptions(keras_distribution=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tf_config=True .* and keras_distribution=True .*"):
        LaunchOptions(tf_config=True, keras_distribution=True)
    with pytest.raises(AttributeError):  # frozen: one value shared by run, Ray and Tune
        LaunchOptions().run_dir = "x"  # type: ignore[misc]


def test_restarts_need_a_run_directory():
    with pytest.raises(ValueError, match="max_restarts and resume need run_dir"):
        distcb.run(train, num_workers=2, max_restarts=1)


def test_the_thread_backend_refuses_restarts(tmp_path):
    with pytest.raises(ValueError, match="backend='thread' does not restart or resume workers"):
        distcb.run(train, num_workers=1, backend="thread", run_dir=str(tmp_path), max_restarts=1)
