"""TLS for the coordinator's server: its certificate and key (the clients' side, trust in a CA,
is `distcb.transport.tls`).

``DISTCB_TLS_CERT`` and ``DISTCB_TLS_KEY`` name the PEM certificate (chain) and key
(`distcb.transport.tls.ENV_CERT`, `ENV_KEY`); the certificate must name the host the
workers dial (a Kubernetes Service's DNS name, or the IP address).
"""

from __future__ import annotations

import os
import ssl

__all__ = ["server_context"]


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The coordinator's TLS context: TLS 1.2 or later, this certificate and key.

    Raises:
        ValueError: a file is missing or does not hold a PEM certificate / matching key.
    """
    for label, path in (("certificate", cert_file), ("key", key_file)):
        if not path or not os.path.isfile(path):
            raise ValueError(f"the TLS {label} file {path!r} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"could not load the TLS certificate {cert_file!r} with the key {key_file!r}: {exc} "
            "(both must be PEM, and the key must belong to the certificate)"
        ) from None
    return context
