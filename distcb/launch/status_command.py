"""`distcb status`: a running coordinator's ``/status``, as readable text (once, or redrawn
with ``--watch``, as the status page at ``GET /`` shows it) or as JSON (``--json``).

The token comes from ``DISTCB_TOKEN`` or ``--token-file``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

from distcb.launch.usage import HelpFormatter, UsageError, positive_seconds
from distcb.protocol import exit_codes
from distcb.protocol.logs import from_json_value
from distcb.worker.context import ENV_TOKEN

_BARS = "▁▂▃▄▅▆▇█"
_CLEAR = "\x1b[H\x1b[2J"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="show a running coordinator's status (text; --watch: live; --json: JSON)",
        description=(
            "Show a running coordinator's status: its workers, the aggregated metrics, the\n"
            "decisions and the sinks, as the status page at GET / shows them. The token\n"
            f"comes from ${ENV_TOKEN} or --token-file."
        ),
        epilog=(
            "examples:\n"
            "  distcb status --address coordinator:8765          # readable text, once\n"
            "  distcb status --address coordinator:8765 --watch  # redrawn until the job ends\n"
            "  distcb status --address coordinator:8765 --json   # GET /status, as JSON"
        ),
        formatter_class=HelpFormatter,
    )
    status.add_argument(
        "--address", required=True, metavar="HOST:PORT", help="the coordinator's address"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw a readable view every --interval-s until the job ends (exit 0 when it "
        "finished, 1 when it failed)",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print GET /status as JSON instead of text (once; not with --watch)",
    )
    status.add_argument(
        "--interval-s",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two redraws with --watch",
    )
    status.add_argument(
        "--timeout-s",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds one request may take",
    )
    status.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the job's token from this file (default: ${ENV_TOKEN})",
    )


class StatusUnavailable(Exception):
    """The coordinator could not be reached (or is gone)."""


def fetch_status(address: str, token: str, timeout_s: float) -> dict[str, Any]:
    """``GET /status`` of the coordinator at `address`.

    Raises:
        UsageError: the token was rejected.
        StatusUnavailable: the coordinator cannot be reached or answered something else.
    """
    request = urllib.request.Request(
        f"http://{address}/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise UsageError(
                f"the coordinator at {address} rejected the token; set {ENV_TOKEN} or pass "
                "--token-file with the job's token"
            ) from None
        raise StatusUnavailable(f"the coordinator at {address} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(f"cannot reach the coordinator at {address}: {reason}") from None
    if not isinstance(data, dict):
        raise StatusUnavailable(f"the coordinator at {address} answered {type(data).__name__}")
    return data


def run(options: argparse.Namespace, out: TextIO | None = None) -> int:
    """`distcb status`; the exit code."""
    out = out or sys.stdout
    token = _token(options.token_file)
    if options.json and options.watch:
        raise UsageError("--json prints the status once; it cannot be combined with --watch")
    if not options.watch:
        try:
            status = fetch_status(options.address, token, options.timeout_s)
        except StatusUnavailable as exc:
            print(f"distcb status: {exc}", file=sys.stderr)
            return exit_codes.FAILED
        out.write((json.dumps(status, indent=2) if options.json else render(status)) + "\n")
        return exit_codes.FINISHED
    return watch(options.address, token, options.interval_s, options.timeout_s, out)


def watch(address: str, token: str, interval_s: float, timeout_s: float, out: TextIO) -> int:
    """Redraw the status until the job ends; 0 when it finished, 1 when it failed or the
    coordinator could not be reached."""
    seen: dict[str, Any] | None = None
    interactive = out.isatty()
    while True:
        try:
            status = fetch_status(address, token, timeout_s)
        except StatusUnavailable as exc:
            if seen is None:
                print(f"distcb status: {exc}", file=sys.stderr)
                return exit_codes.FAILED
            out.write(f"\nthe coordinator at {address} is gone: the job ended ({exc})\n")
            out.flush()
            return exit_codes.FAILED if seen.get("failure") else exit_codes.FINISHED
        seen = status
        frame = render(status)
        out.write((_CLEAR if interactive else "\n") + frame + "\n")
        out.flush()
        if status.get("phase") == "done":
            return exit_codes.FAILED if status.get("failure") else exit_codes.FINISHED
        time.sleep(interval_s)


def _token(path: str | None) -> str:
    if path is None:
        return os.environ.get(ENV_TOKEN, "")
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError as exc:
        raise UsageError(f"--token-file {path!r} cannot be read: {exc.strerror}") from None


# ---------------------------------------------------------------------- rendering


def render(status: dict[str, Any]) -> str:
    """The status as text: the sections of the status page, in the same order."""
    status = from_json_value(status)
    lines = [_headline(status), ""]
    lines += _workers(status.get("workers") or [], status.get("batches_streamed") is not False)
    lines += [""] + _metrics(status.get("history") or {}, status.get("history_epochs") or [])
    lines += [""] + _spread(status)
    lines += [""] + _decisions(status.get("decisions") or [], status.get("decision_count", 0))
    lines += [""] + _sinks(status.get("sinks") or {})
    if status.get("failure"):
        lines += ["", f"FAILED: {status['failure']}"]
    return "\n".join(lines)


def epoch_text(status: dict[str, Any]) -> str:
    """Epochs as Keras counts them (1-based): "epoch 3/400" while the third runs; once the
    job is done, how many finished ("finished 400/400", "stopped early at 608/4000")."""
    epochs = status.get("epochs")
    of = f"/{epochs}" if epochs else ""
    done = int(status.get("epochs_done") or 0)
    phase = status.get("phase")
    if phase == "done":
        if status.get("failure"):
            return f"failed after {done}{of} epochs"
        if epochs and done < epochs:
            return f"stopped early at epoch {done}{of}"
        return f"finished {done}{of} epochs"
    if phase == "joining":
        return f"epoch 0{of}"
    return f"epoch {int(status.get('epoch') or 0) + 1}{of}"


def _headline(status: dict[str, Any]) -> str:
    live = len(status.get("live") or [])
    step = (
        f"global step {status.get('global_step', 0)}"
        if status.get("batches_streamed") is not False
        else "steps not streamed"
    )
    return (
        f"distcb job: {status.get('phase', '?')} · {epoch_text(status)} · {step} · "
        f"{status.get('world_size', '?')} workers ({live} live)"
    )


def _workers(workers: Sequence[dict[str, Any]], streamed: bool = True) -> list[str]:
    if not streamed:  # no batch logs: steps mean nothing, so leave them out
        short: list[tuple[str, ...]] = [("rank", "host", "state", "epoch", "lag", "heartbeat")]
        for w in workers:
            short.append(
                (
                    str(w.get("rank")),
                    str(w.get("host") or "?"),
                    str(w.get("state")),
                    str(w.get("epoch")),
                    f"{w.get('lag_epochs') or 0} ep",
                    f"{float(w.get('heartbeat_age_s') or 0):.1f} s ago",
                )
            )
        note = "  (steps not streamed: no coordinator callback has a batch hook)"
        return ["Workers", *_table(short), note]
    rows = [("rank", "host", "state", "epoch", "step", "lag", "heartbeat")]
    for w in workers:
        lag = w.get("lag_steps")
        lag_text = (
            f"{w.get('lag_epochs')} ep"
            if w.get("lag_epochs")
            else ("-" if lag is None else str(lag))
        )
        rows.append(
            (
                str(w.get("rank")),
                str(w.get("host") or "?"),
                str(w.get("state")),
                str(w.get("epoch")),
                str(w.get("step")),
                lag_text,
                f"{float(w.get('heartbeat_age_s') or 0):.1f} s ago",
            )
        )
    return ["Workers", *_table(rows)]


def _metrics(history: dict[str, Sequence[Any]], epochs: Sequence[int]) -> list[str]:
    lines = [f"Metrics over {len(epochs)} epochs"]
    if not history:
        return [*lines, "  (no epoch has ended yet)"]
    width = max(len(k) for k in history)
    for key in sorted(history):
        values = [v for v in history[key] if isinstance(v, int | float)]
        if not values:
            continue
        shown = values[-40:]
        scale = ""
        if is_learning_rate(key) and all(v > 0 for v in shown):
            # A learning rate spans decades: on a linear scale every reduction after the
            # first is flat at the bottom.
            shown, scale = [math.log10(v) for v in shown], "  (log scale)"
        lines.append(f"  {key:<{width}}  {sparkline(shown)}  {_number(values[-1])}{scale}")
    return lines


def is_learning_rate(name: str) -> bool:
    return name == "lr" or name.endswith(("learning_rate", "_lr"))


def _spread(status: dict[str, Any]) -> list[str]:
    monitored = [m for m in status.get("monitored") or [] if m]
    spread = status.get("epoch_spread") or {}
    history = status.get("epoch_spread_history") or {}
    names = [m for m in monitored if m in spread] or sorted(spread)[:1]
    if not names:
        return ["Spread over workers", "  (needs an epoch of more than one worker)"]
    lines = []
    for name in names:
        s = spread[name]
        lines.append(f"Spread of {name} over workers (last epoch)")
        lines.append(
            f"  min {_number(s['min'])} (rank {s['min_rank']})  max {_number(s['max'])} "
            f"(rank {s['max_rank']})  width {_number(s['max'] - s['min'])}"
        )
        widths = [e["max"] - e["min"] for e in history.get(name, [])]
        if widths:
            lines.append(f"  width over epochs  {sparkline(widths[-40:])}")
    return lines


def describe_decision(record: dict[str, Any]) -> str:
    """``set_lr learning_rate=0.05 at epoch_begin 3`` (as the status page writes it)."""
    at = record.get("at") or {}
    where = str(at.get("phase", "?")).replace("_", " ")
    if "epoch" in at:
        where += f" {at['epoch']}"
    if "step" in at:
        where += f" step {at['step']}"
    fields = " ".join(
        f"{k}={_number(v) if isinstance(v, float) else v}"
        for k, v in record.items()
        if k not in ("kind", "at", "made_by", "time")
    )
    return " ".join(p for p in (str(record.get("kind")), fields, "at", where) if p)


COLLAPSED_KINDS = frozenset({"save", "backup", "snapshot", "release"})
"""Decisions that repeat every epoch: a run of them by one callback is one line."""


def collapse_decisions(records: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Newest first; a run of one repeating kind by one callback becomes (newest, count)."""
    rows: list[list[Any]] = []
    for record in reversed(records):
        if (
            rows
            and record.get("kind") in COLLAPSED_KINDS
            and rows[-1][0].get("kind") == record.get("kind")
            and rows[-1][0].get("made_by") == record.get("made_by")
        ):
            rows[-1][1] += 1
        else:
            rows.append([record, 1])
    return [(record, count) for record, count in rows]


def _decisions(records: Sequence[dict[str, Any]], count: int) -> list[str]:
    rows = collapse_decisions(records)[:10]
    shown = sum(n for _, n in rows)
    lines = [f"Decisions ({shown} most recent of {count}, newest first)"]
    if not rows:
        return [*lines, "  (none yet)"]
    for record, n in rows:
        when = time.strftime("%H:%M:%S", time.localtime(float(record.get("time") or 0)))
        what = describe_decision(record)
        if n > 1:
            what = f"{record.get('kind')} x{n} (newest: {what})"
        lines.append(f"  {when}  {what}  by {record.get('made_by')}")
    return lines


def _sinks(sinks: dict[str, Any]) -> list[str]:
    lines = ["Sinks"]
    if not sinks:
        return [*lines, "  (none)"]
    for name in sorted(sinks):
        stats = sinks[name]
        if isinstance(stats, dict):
            text = "  ".join(f"{k} {v}" for k, v in stats.items())
        else:
            text = str(stats)
        lines.append(f"  {name}: {text}")
    return lines


def sparkline(values: Sequence[float]) -> str:
    """One character per value, its height by the value within the values' range."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "?" * len(values)
    low, high = min(finite), max(finite)
    span = high - low
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append("!")
        elif span == 0:
            out.append(_BARS[len(_BARS) // 2])
        else:
            out.append(_BARS[round((v - low) / span * (len(_BARS) - 1))])
    return "".join(out)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    ]
