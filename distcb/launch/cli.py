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
The token comes from ``DISTCB_TOKEN`` (required beyond loopback). The address
it binds goes through ``DISTCB_HOST_ALIASES`` (see `distcb.worker.cluster`).
`k8s render` prints Kubernetes manifests (docs/kubernetes.md).

Exit codes (`distcb.protocol.exit_codes`): 0 done, 1 the job failed, 2 bad usage
(argparse's, and every `UsageError`: printed without a traceback), 143 when a
SIGTERM stops it (what Kubernetes reports for a SIGTERM'd process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import distcb
from distcb.coordinator.engine import Coordinator
from distcb.launch import callback_spec, launch_command, status_command
from distcb.launch.k8s import command as k8s_command
from distcb.launch.usage import HelpFormatter, UsageError, bind_error, port_number, positive_int
from distcb.protocol import exit_codes
from distcb.protocol.config import Config
from distcb.worker import cluster


def _load_callbacks(spec: str | None) -> list[Any]:
    return callback_spec.load(spec) if spec else []


def _config(raw: str | None) -> Config:
    if not raw:
        return Config()
    try:
        return Config.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"--config must be a JSON object of Config fields: {exc}") from None


async def _serve(options: argparse.Namespace) -> int:
    from distcb.transport.websocket import WebSocketServer

    config = _config(options.config)
    coordinator = Coordinator(
        _load_callbacks(options.callbacks), world_size=options.world_size, config=config
    )
    token = os.environ.get("DISTCB_TOKEN") or None
    host, port = options.host, options.port
    aliases = cluster.host_aliases(os.environ.get(cluster.ENV_HOST_ALIASES, ""))
    aliased = cluster.apply_alias(f"{host}:{port}", aliases)
    if aliased != f"{host}:{port}":  # DISTCB_HOST_ALIASES names this listening address
        host, port = cluster.split_host_port(aliased)
    try:
        server = WebSocketServer(coordinator, host=host, port=port, token=token, config=config)
    except ValueError as exc:  # beyond loopback without a token
        raise UsageError(str(exc)) from None
    try:
        await server.start()
    except OSError as exc:
        raise bind_error(exc, host, port, "--port (or --host)") from None
    try:
        print(f"distcb coordinator listening on {server.address}", flush=True)
        history = await coordinator.run()
    finally:
        await server.aclose()
    if options.history:
        await asyncio.to_thread(_write_history, options.history, history)
    print(f"distcb coordinator done after {len(history.epoch)} epochs", flush=True)
    return 0


def _write_history(path: str, history: Any) -> None:
    with open(path, "w") as handle:
        json.dump({"epoch": history.epoch, "history": history.history}, handle)


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
    if options.state_dir:
        _check_state_dir(options.state_dir)
    return asyncio.run(_serve(options))


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
        help="the coordinator's state directory (a persistent volume on Kubernetes; exact "
        "resume keeps its journal there); created if missing, must be writable",
    )


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
