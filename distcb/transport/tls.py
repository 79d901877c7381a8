"""TLS for the websocket transport, the clients' side: the workers' trust.

The coordinator serves ``wss://`` with a certificate and key read from files
(`distcb.server.tls.server_context`); workers verify it against a CA file (`client_context`),
named by ``DISTCB_TLS_CA`` in their environment (`WorkerContext.tls_ca`). The
certificate must name the host the workers dial (a Kubernetes Service's DNS
name, or the IP address).

Environment (the ``distcb coordinator`` command reads these when its flags are
not given): ``DISTCB_TLS_CERT`` and ``DISTCB_TLS_KEY``, the paths of the
PEM certificate (chain) and key; the workers' ``DISTCB_TLS_CA``, the path of
the PEM CA bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

__all__ = [
    "ENV_CA",
    "ENV_CERT",
    "ENV_KEY",
    "PLAINTEXT_TO_TLS",
    "client_context",
    "speaks_tls",
]

ENV_CERT = "DISTCB_TLS_CERT"
ENV_KEY = "DISTCB_TLS_KEY"
ENV_CA = "DISTCB_TLS_CA"

PLAINTEXT_TO_TLS = (
    f"this coordinator speaks TLS; set {ENV_CA} to the PEM CA that signed its certificate "
    "(the client then dials https/wss)"
)
"""What a client that spoke plaintext to a TLS server is told (server and clients alike)."""


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A worker's TLS context: verifies the coordinator's certificate and host name against
    `ca_file` (a PEM bundle), or against the system's trust store when None.

    Raises:
        ValueError: `ca_file` is missing or holds no PEM certificate.
    """
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ValueError(
            f"the CA file {ca_file!r} ({ENV_CA}) does not exist; it must name the PEM "
            "certificate of the CA that signed the coordinator's certificate"
        )
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"could not load the CA file {ca_file!r} ({ENV_CA}): {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether `host:port` completes a TLS handshake (its certificate is not checked): asked
    after a plaintext request was dropped, to tell the user why."""
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # a diagnosis only: nothing is sent over it
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port, ssl=probe)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
