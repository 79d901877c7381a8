"""What every benchmark section shares: the machine's state, spreads, verdicts, summary rows."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def load_line() -> str:
    """The line each section starts with: a noisy machine shows here first."""
    return f"Load average when this section started: {load_average()} ({os.cpu_count()} CPUs)."


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """min–median–max."""
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{fmt.format(lo)}–**{fmt.format(mid)}**–{fmt.format(hi)}"


def verdict(values: list[float], goal: float, *, lower_is_better: bool = True) -> str:
    """Met only when the whole spread is on the good side of the goal; missed when all of it
    is on the bad side; otherwise the spread covers the goal: not resolved."""
    if lower_is_better:
        if max(values) <= goal:
            return "met"
        if min(values) > goal:
            return "missed"
    else:
        if min(values) >= goal:
            return "met"
        if max(values) < goal:
            return "missed"
    return "not resolved (the spread covers the goal)"


@dataclass(frozen=True)
class SummaryRow:
    """One row of the issue-14 table (docs/BENCHMARKS.md, first section)."""

    figure: str
    before: str
    after: str
    goal: str
    verdict: str
    command: str


SUMMARY: list[SummaryRow] = []
"""Rows the benchmark modules add as they run; bench/run_all.py prints them first."""


def summary(row: SummaryRow) -> None:
    SUMMARY.append(row)
