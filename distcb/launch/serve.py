"""`distcb coordinator`: a coordinator on its own, serving its workers over websockets.

The token comes from ``DISTCB_TOKEN``. Without it, on loopback, the server
generates one and this command prints it to the terminal (stdout when it is a
terminal: never into a log file); when stdout is not a terminal it stops with
exit code 2 and asks for ``DISTCB_TOKEN``, since no worker could learn the
token. Beyond loopback a token is required.

TLS: ``--tls-cert``/``--tls-key`` (or ``DISTCB_TLS_CERT``/``DISTCB_TLS_KEY``)
name the PEM certificate and key; workers then dial ``wss://`` and verify the
certificate against ``DISTCB_TLS_CA``. Binding beyond loopback without TLS is
refused (exit 2) unless ``--insecure`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from ssl import SSLContext
from typing import Any

from distcb.coordinator.engine import Coordinator
from distcb.launch import callback_spec
from distcb.launch.usage import UsageError, bind_error
from distcb.protocol import exit_codes
from distcb.protocol.config import Config
from distcb.server.tls import server_context
from distcb.transport import tls
from distcb.worker import cluster

__all__ = ["add_arguments", "run", "server_tls_files"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS options of ``distcb coordinator``."""
    parser.add_argument(
        "--tls-cert",
        help=f"PEM certificate (chain) to serve wss:// with (default: ${tls.ENV_CERT})",
    )
    parser.add_argument(
        "--tls-key", help=f"PEM private key of --tls-cert (default: ${tls.ENV_KEY})"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plain ws:// beyond loopback (the token crosses the network in plaintext)",
    )


def run(options: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run the coordinator the parsed `options` describe; returns the exit code.

    Raises:
        UsageError: bad options (the CLI prints it and exits 2, without a traceback).
    """
    source: Mapping[str, str] = os.environ if env is None else env
    callbacks = callback_spec.load(options.callbacks) if options.callbacks else []
    config = _config(options.config)
    try:
        ssl_context = _server_tls(options, source)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = source.get("DISTCB_TOKEN") or None
    host, port = _bind_address(options.host, options.port, source)
    if token is None and _loopback(host) and not sys.stdout.isatty():
        raise UsageError(
            "DISTCB_TOKEN is not set and stdout is not a terminal, so the token this "
            "coordinator would generate could reach no worker (it is never written to a log). "
            "Set DISTCB_TOKEN (e.g. to the output of `openssl rand -hex 32`) for the coordinator "
            "and every worker."
        )
    return asyncio.run(_serve(options, config, callbacks, host, port, token, ssl_context))


async def _serve(
    options: argparse.Namespace,
    config: Config,
    callbacks: list[Any],
    host: str,
    port: int,
    token: str | None,
    ssl_context: SSLContext | None,
) -> int:
    from distcb.server import WebSocketServer

    state_dir = getattr(options, "state_dir", None)
    coordinator = Coordinator(
        callbacks,
        world_size=options.world_size,
        config=config,
        state_dir=state_dir,
        max_restarts=getattr(options, "max_restarts", 0),
        # A coordinator started again with its state directory (a pod on a persistent
        # volume) goes on from its journal.
        resume=state_dir is not None,
    )
    try:
        server = WebSocketServer(
            coordinator,
            host=host,
            port=port,
            token=token,
            config=config,
            ssl=ssl_context,
            insecure=options.insecure,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        await server.start()
    except OSError as exc:
        raise bind_error(exc, host, port, "--port (or --host)") from None
    try:
        print(f"distcb coordinator listening on {server.address}", flush=True)
        if server.token_generated:  # stdout is a terminal (checked above)
            print(
                f"distcb coordinator token (give it to every worker as DISTCB_TOKEN): "
                f"{server.token}",
                flush=True,
            )
        history = await coordinator.run()
    finally:
        await server.aclose()
    if options.history:
        await asyncio.to_thread(_write_history, options.history, history)
    print(f"distcb coordinator done after {len(history.epoch)} epochs", flush=True)
    return exit_codes.FINISHED


def server_tls_files(options: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(certificate, key) from ``--tls-cert``/``--tls-key`` or the environment; None: no TLS.

    Raises:
        ValueError: only one of the two, or files that do not load.
    """
    cert = options.tls_cert or env.get(tls.ENV_CERT) or None
    key = options.tls_key or env.get(tls.ENV_KEY) or None
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError(
            f"TLS needs both a certificate and its key: received certificate {cert!r} and key "
            f"{key!r} (--tls-cert/--tls-key or {tls.ENV_CERT}/{tls.ENV_KEY})"
        )
    server_context(cert, key)  # loads now: a bad file is a usage error, before any work
    return cert, key


def _server_tls(options: argparse.Namespace, env: Mapping[str, str]) -> SSLContext | None:
    files = server_tls_files(options, env)
    return None if files is None else server_context(*files)


def _bind_address(host: str, port: int, env: Mapping[str, str]) -> tuple[str, int]:
    """The address to listen on, through ``DISTCB_HOST_ALIASES`` (see `distcb.worker.cluster`)."""
    aliases = cluster.host_aliases(env.get(cluster.ENV_HOST_ALIASES, ""))
    aliased = cluster.apply_alias(f"{host}:{port}", aliases)
    if aliased != f"{host}:{port}":
        return cluster.split_host_port(aliased)
    return host, port


def _loopback(host: str) -> bool:
    from distcb.server import is_loopback

    return is_loopback(host)


def _config(raw: str | None) -> Config:
    if not raw:
        return Config()
    try:
        return Config.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"--config must be a JSON object of Config fields: {exc}") from None


def _write_history(path: str, history: Any) -> None:
    with open(path, "w") as handle:
        json.dump({"epoch": history.epoch, "history": history.history}, handle)
