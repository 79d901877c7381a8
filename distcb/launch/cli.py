"""The `distcb` console script.

    distcb coordinator --world-size 4 --callbacks mypkg.callbacks:make --host 0.0.0.0 --port 8765
    distcb status --address coordinator:8765
    distcb k8s render --variant jobset --image registry.example.com/train:1 --workers 4

`coordinator` runs a coordinator on its own (Kubernetes: a pod or a Service in
front of it; workers find it through ``DISTCB_ADDRESS`` and ``DISTCB_TOKEN``).
`--callbacks` names a function returning the list of coordinator callbacks.
The token comes from ``DISTCB_TOKEN`` (required beyond loopback; on loopback
one is generated and printed when stdout is a terminal), TLS from
``--tls-cert``/``--tls-key`` (see `distcb.launch.serve`). The address
it binds goes through ``DISTCB_HOST_ALIASES`` (see `distcb.worker.cluster`).
`k8s render` prints Kubernetes manifests (docs/kubernetes.md).

Exit codes: 0 done, 1 the job failed, 2 bad usage (argparse's), 143 when a
SIGTERM stops it (what Kubernetes reports for a SIGTERM'd process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence

from distcb.launch import serve as serving
from distcb.launch.k8s import command as k8s_command


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
        raise SystemExit(2) from None


def _status(options: argparse.Namespace) -> int:
    request = urllib.request.Request(
        f"http://{options.address}/status",
        headers={"Authorization": f"Bearer {os.environ.get('DISTCB_TOKEN', '')}"},
    )
    with urllib.request.urlopen(request, timeout=options.timeout_s) as response:
        print(json.dumps(json.load(response), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distcb", description="distcb command line")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("coordinator", help="run a coordinator for N workers")
    serve.add_argument("--world-size", type=int, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--callbacks", help="module:function returning the callbacks")
    serve.add_argument("--config", help="Config fields as JSON")
    serve.add_argument("--history", help="write the History as JSON to this path")
    serve.add_argument(
        "--state-dir",
        help="the coordinator's state directory (a persistent volume on Kubernetes): its "
        "journal goes there, and a coordinator started again with it goes on from it; "
        "created if missing, must be writable",
    )
    serve.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="how many times a lost or preempted worker may restart the job from its last "
        "epoch barrier (needs --state-dir; workers then need DISTCB_RUN_DIR for backups); "
        "default 0",
    )
    serving.add_arguments(serve)
    status = commands.add_parser("status", help="print a running coordinator's /status")
    status.add_argument("--address", required=True, help="host:port")
    status.add_argument("--timeout-s", type=float, default=10.0)
    k8s_command.add_parser(commands)
    options = parser.parse_args(argv)
    if options.command == "coordinator":
        if options.max_restarts and not options.state_dir:
            parser.error("--max-restarts needs --state-dir (the journal goes there)")
        if options.state_dir:
            _check_state_dir(options.state_dir)
        return serving.run(options)
    if options.command == "k8s":
        return k8s_command.run(options)
    return _status(options)


if __name__ == "__main__":
    sys.exit(main())
