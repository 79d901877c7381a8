"""Where the coordinator's callbacks come from: the three forms of --callbacks, and the
function a training script may define."""

from __future__ import annotations

import sys
import textwrap

import pytest

from distcb.callbacks import EarlyStopping
from distcb.launch import callback_spec
from distcb.launch.usage import UsageError

SCRIPT = textwrap.dedent(
    """
    import argparse
    import sys

    from distcb.callbacks import EarlyStopping

    LOADED_AS = __name__

    def distcb_callbacks():
        parser = argparse.ArgumentParser()
        parser.add_argument("--patience", type=int, default=1)
        options, _ = parser.parse_known_args()
        return [EarlyStopping(monitor="loss", patience=options.patience)]

    def not_a_list():
        return EarlyStopping()

    def not_callbacks():
        return [EarlyStopping(), "early stopping"]

    if __name__ == "__main__":
        raise SystemExit("the training ran in the launcher")
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "my_train_script.py"
    path.write_text(SCRIPT)
    yield str(path)
    sys.modules.pop("my_train_script", None)


def test_the_script_function_is_found_without_running_anything(tmp_path, script):
    assert callback_spec.script_defines(script)
    other = tmp_path / "plain.py"
    other.write_text("raise SystemExit('must not run')\ndef train(): pass\n")
    assert not callback_spec.script_defines(str(other))  # read, not run
    broken = tmp_path / "broken.py"
    broken.write_text("def distcb_callbacks(:\n")
    with pytest.raises(UsageError, match=r"does not parse: .* \(line 1\)"):
        callback_spec.script_defines(str(broken))


def test_a_function_of_the_script_is_called_with_the_scripts_argv(script):
    made = callback_spec.load(":distcb_callbacks", script=script, script_argv=["--patience", "7"])
    assert len(made) == 1
    assert isinstance(made[0], EarlyStopping)
    assert made[0].patience == 7
    # Loaded as a module (its __main__ block did not run), under its own name.
    assert sys.modules["my_train_script"].LOADED_AS == "my_train_script"


def test_file_and_module_forms(script, tmp_path, monkeypatch):
    assert isinstance(callback_spec.load(f"{script}:distcb_callbacks")[0], EarlyStopping)
    monkeypatch.chdir(tmp_path)  # module names are found from the current directory too
    sys.modules.pop("my_train_script", None)
    assert isinstance(callback_spec.load("my_train_script:distcb_callbacks")[0], EarlyStopping)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "--callbacks must be MODULE:FUNCTION"),
        ("pkg/with/slash:make", "is neither a module name"),
        ("mod:not-an-identifier", "--callbacks must be MODULE:FUNCTION"),
        (":not_a_list", "must return a list of callbacks, it returned a EarlyStopping"),
        (":not_callbacks", "item 1 of the returned list is a str, not a callback"),
        (":missing", "has no 'missing'; its callables: .*distcb_callbacks"),
        ("missing_file.py:make", "no such file 'missing_file.py'"),
    ],
)
def test_what_is_wrong_with_a_spec_is_said(spec, message, script):
    with pytest.raises(UsageError, match=message):
        callback_spec.load(spec, script=script)


def test_a_script_function_needs_a_script():
    with pytest.raises(UsageError, match="names a function of the training script"):
        callback_spec.load(":distcb_callbacks")
