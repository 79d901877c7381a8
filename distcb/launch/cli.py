"""The `distcb` console script (also `python -m distcb`).

    distcb launch --nproc-per-node 2 train.py --epochs 10
    distcb coordinator --world-size 4 --callbacks mypkg.callbacks:make --host 0.0.0.0 --port 8765
    distcb status --address coordinator:8765 [--watch]
    distcb k8s render --variant jobset --image registry.example.com/train:1 --workers 4
    distcb --version

`launch` runs a training script on N workers (and nodes), torchrun-style
(`distcb.launch.launch_command`).

`coordinator` runs a coordinator on its own (Kubernetes: a pod or a Service in
front of it; workers find it through ``DISTCB_ADDRESS`` and ``DISTCB_TOKEN``).
`--callbacks` names a function returning the list of coordinator callbacks.
The token comes from ``DISTCB_TOKEN`` (required beyond loopback; on loopback
one is generated and printed when stdout is a terminal), TLS from
``--tls-cert``/``--tls-key`` (see `distcb.launch.serve`). The address
it binds goes through ``DISTCB_HOST_ALIASES`` (see `distcb.worker.cluster`).
`k8s render` prints Kubernetes manifests (docs/kubernetes.md).

Exit codes (`distcb.protocol.exit_codes`): 0 done, 1 the job failed, 2 bad usage
(argparse's, and every `UsageError`: printed without a traceback), 143 when a
SIGTERM stops it (what Kubernetes reports for a SIGTERM'd process).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import distcb
from distcb.launch import launch_command, status_command
from distcb.launch import serve as serving
from distcb.launch.k8s import command as k8s_command
from distcb.launch.usage import HelpFormatter, UsageError, port_number, positive_int
from distcb.protocol import exit_codes


def _check_state_dir(path: str) -> None:
    """The state directory exists and takes files, or the coordinator stops now (exit 2)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        print(
            f"distcb coordinator: --state-dir {path!r} is not a writable directory: {exc}",
            file=sys.stderr,
        )
        raise SystemExit(exit_codes.USAGE) from None


def _coordinator(options: argparse.Namespace) -> int:
    if options.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0, received {options.max_restarts}")
    if options.max_restarts and not options.state_dir:
        raise UsageError("--max-restarts needs --state-dir (the journal goes there)")
    if options.state_dir:
        _check_state_dir(options.state_dir)
    return serving.run(options)


def _add_coordinator_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "coordinator",
        help="run a coordinator for N workers started elsewhere (Kubernetes pods, by hand)",
        description="Run a coordinator on its own; workers find it through DISTCB_ADDRESS and "
        "DISTCB_TOKEN (the token comes from DISTCB_TOKEN; required beyond loopback).",
        formatter_class=HelpFormatter,
    )
    serve.add_argument(
        "--world-size", type=positive_int, required=True, metavar="N", help="workers in the job"
    )
    serve.add_argument("--host", default="127.0.0.1", help="the interface to listen on")
    serve.add_argument(
        "--port", type=port_number, default=8765, help="the TCP port to listen on; 0 for any"
    )
    serve.add_argument(
        "--callbacks",
        metavar="SPEC",
        help="the coordinator's callbacks: MODULE:FUNCTION or FILE.py:FUNCTION, a function "
        "returning the list (default: none but the History)",
    )
    serve.add_argument(
        "--config",
        metavar="JSON",
        help="distcb.Config fields as JSON, e.g. '{\"join_timeout_s\": 300}' (seconds) "
        "(default: Config's defaults)",
    )
    serve.add_argument(
        "--history", metavar="PATH", help="write the History as JSON to this path at the end"
    )
    serve.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the coordinator's state directory (a persistent volume on Kubernetes): its "
        "journal goes there, and a coordinator started again with it goes on from it; "
        "created if missing, must be writable",
    )
    serve.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="how many times a lost or preempted worker may restart the job from its last "
        "epoch barrier (needs --state-dir; workers then need DISTCB_RUN_DIR for backups); "
        "`distcb k8s render` sets it from its --max-resumes",
    )
    serving.add_arguments(serve)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "coordinator": _coordinator,
    "launch": launch_command.run,
    "status": status_command.run,
    "k8s": k8s_command.run,
}


def parser() -> argparse.ArgumentParser:
    """The whole command line (every command's --help shows each option's default)."""
    top = argparse.ArgumentParser(
        prog="distcb",
        description="distcb: Keras callbacks run once for a distributed training job.",
        formatter_class=HelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"distcb {distcb.__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    launch_command.add_parser(commands)
    _add_coordinator_parser(commands)
    status_command.add_parser(commands)
    k8s_command.add_parser(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. Bad usage raises SystemExit(2) after saying what was
    received and what is expected, without a traceback (argparse does the same)."""
    options = parser().parse_args(argv)
    try:
        return COMMANDS[options.command](options)
    except UsageError as exc:
        print(f"distcb {options.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(exit_codes.USAGE) from None


if __name__ == "__main__":
    sys.exit(main())
