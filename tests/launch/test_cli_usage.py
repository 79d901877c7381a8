"""A command line that explains itself: help for every option, --version, and user errors
that say what was received and what is expected, exit 2, and print no traceback."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tomllib

import pytest

import distcb
from distcb.launch.cli import main, parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLEEPER = os.path.join(ROOT, "tests", "launch", "scripts", "sleeper.py")


def distcb_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distcb", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    found = {}

    def walk(prefix: str, node: argparse.ArgumentParser) -> None:
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix} {name}".strip()] = sub
                    walk(f"{prefix} {name}", sub)

    walk("", parser())
    return found


def test_every_option_of_every_command_has_help_and_shows_its_default():
    commands = subcommands()
    assert {"launch", "coordinator", "status", "k8s", "k8s render"} <= set(commands)
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            option = action.option_strings[-1]
            assert action.help, f"distcb {name} {option} has no help"
            shown = formatter._expand_help(action)  # the text --help prints for it
            if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
                assert "(default:" in shown, f"distcb {name} {option} hides its default"
    launch_help = re.sub(r"\s+", " ", commands["launch"].format_help())
    assert "--nproc-per-node N worker processes on this node (default: 1)" in launch_help
    assert "(default: 127.0.0.1:0)" in launch_help
    status_help = re.sub(r"\s+", " ", commands["status"].format_help())
    assert "seconds between two redraws with --watch (default: 1.0)" in status_help


def test_version_from_the_console_script_and_python_m(capsys):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        declared = tomllib.load(handle)["project"]["version"]
    assert distcb.__version__ == declared
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"distcb {declared}"
    done = distcb_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"distcb {declared}"


def held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


USAGE_ERRORS = {
    # name: (arguments, what stderr must say)
    "world size 0": (
        ["coordinator", "--world-size", "0"],
        "argument --world-size: expected an integer >= 1, received 0",
    ),
    "nproc 0": (
        ["launch", "--nproc-per-node", "0", SLEEPER],
        "argument --nproc-per-node: expected an integer >= 1, received 0",
    ),
    "callbacks without a colon": (
        ["launch", "--callbacks", "mycallbacks", SLEEPER],
        "--callbacks must be MODULE:FUNCTION, FILE.py:FUNCTION, or :FUNCTION (a function of the "
        "training script); received 'mycallbacks'",
    ),
    "callbacks module missing": (
        ["coordinator", "--world-size", "1", "--callbacks", "no_such_module_here:make"],
        "--callbacks 'no_such_module_here:make': no module named 'no_such_module_here'",
    ),
    "callbacks function missing": (
        ["launch", "--callbacks", ":no_such_function", os.path.join("examples", "launch_train.py")],
        "has no 'no_such_function'",
    ),
    "no such script": (
        ["launch", "missing_train.py"],
        "no such training script 'missing_train.py'",
    ),
    "node rank too big": (
        ["launch", "--nnodes", "2", "--node-rank", "2", SLEEPER],
        "--node-rank must be below --nnodes 2 (0-1), received 2",
    ),
    "nodes without a token": (
        ["launch", "--nnodes", "2", "--coordinator", "127.0.0.1:29400", SLEEPER],
        "--nnodes 2 needs the job's token on every node",
    ),
    "nodes on port 0": (
        ["launch", "--nnodes", "2", "--coordinator", "127.0.0.1:0", SLEEPER],
        "--coordinator needs a fixed port when --nnodes > 1",
    ),
    "bad coordinator address": (
        ["launch", "--coordinator", "nohostport", SLEEPER],
        "argument --coordinator: expected HOST:PORT with a port 0-65535",
    ),
    "bad config": (
        ["launch", "--config", '{"join_timeout": 3}', SLEEPER],
        "--config: Unknown Config fields ['join_timeout']",
    ),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_user_errors_say_what_is_wrong_and_exit_2_without_a_traceback(case):
    args, expected = USAGE_ERRORS[case]
    done = distcb_cli(*args, env={"DISTCB_TOKEN": ""})
    assert done.returncode == 2, done.stderr
    assert expected in re.sub(r"\s+", " ", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["coordinator", "launch"])
def test_a_port_in_use_is_a_usage_error_that_names_it(command):
    with held_port() as sock:
        port = sock.getsockname()[1]
        args = {
            "coordinator": ["coordinator", "--world-size", "1", "--port", str(port)],
            "launch": ["launch", "--coordinator", f"127.0.0.1:{port}", SLEEPER],
        }[command]
        done = distcb_cli(*args, env={"DISTCB_TOKEN": "a-token"})  # else no token is the error
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_callbacks_function_that_raises_shows_its_own_traceback(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "def distcb_callbacks():\n"
        "    raise RuntimeError('no EarlyStopping for you')\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('the training must not run in the launcher')\n"
    )
    done = distcb_cli("launch", str(script))
    assert done.returncode == 2
    assert (
        "--callbacks ':distcb_callbacks': distcb_callbacks() raised RuntimeError: "
        "no EarlyStopping for you" in done.stderr
    )
    assert f'File "{script}", line 2, in distcb_callbacks' in done.stderr  # their frame
    assert "the training must not run" not in done.stderr + done.stdout
