"""User errors of the command line: what was received, what is expected, exit code 2.

`UsageError` is raised for anything the user can fix by changing the command
(a bad ``--callbacks`` spec, a port in use, a missing token); `distcb.launch.cli`
prints it without a traceback and exits with `distcb.protocol.exit_codes.USAGE`,
as argparse does for a malformed command line. The argparse types here turn bad
values into argparse's own errors (usage line, message, exit 2).
"""

from __future__ import annotations

import argparse
import errno


class UsageError(Exception):
    """A command the user must change: printed as ``distcb <command>: error: <message>``."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends every option's default to its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" not in text
            and "(default:" not in text
            and action.default is not argparse.SUPPRESS
            and action.option_strings
            and action.nargs != 0  # flags: their help says what on means
            and action.default is not None
        ):
            text += " (default: %(default)s)"
        return text


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received {value}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port number 0-65535, received {text!r}"
        ) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, received {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0, received {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, received {text}")
    return value


def host_port(text: str) -> tuple[str, int]:
    """argparse type: ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 means any free port."""
    host, sep, raw_port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not raw_port.isdigit() or not 0 <= int(raw_port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port 0-65535 (e.g. 10.0.0.1:29400), received {text!r}"
        )
    return host, int(raw_port)


def bind_error(exc: OSError, host: str, port: int, option: str) -> UsageError:
    """A failed bind as the user can act on it."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return UsageError(
            f"cannot listen on {where}: the port is in use (another coordinator or program "
            f"holds it); choose another {option}, or port 0 for any free port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(
            f"cannot listen on {where}: {host} is not an address of this machine; give one of "
            f"its addresses in {option}, or 0.0.0.0 for all of them"
        )
    if exc.errno == errno.EACCES:
        return UsageError(
            f"cannot listen on {where}: permission denied (ports below 1024 need privileges); "
            f"choose another {option}"
        )
    return UsageError(f"cannot listen on {where}: {exc.strerror or exc}")
