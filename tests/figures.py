"""Figures of the reliability tests: what they held, ran, injected and lost.

The concurrency, fault, bad-input and property tests add to one counter as they
run; tests/conftest.py prints it at the end of the session. The counter is
shared by threads, hence the lock.
"""

from __future__ import annotations

import threading
from collections import Counter

# Printed in this order, with these labels.
LABELS: dict[str, str] = {
    "sessions": "sessions held (connections of their own)",
    "operations": "operations run (statements and transactions)",
    "faults_injected": "faults injected (crashes, terminations, timeouts)",
    "faults_survived": "faults survived (every committed row whole, no state left unremovable)",
    "bad_input_classes": "bad-input classes tried",
    "rows_checked": "committed rows checked after a fault or race",
    "rows_lost": "rows lost (must be 0)",
    "deadlocks": "deadlocks (40P01) between cleanups or with the application (must be 0)",
}

_figures: Counter[str] = Counter()
_lock = threading.Lock()


def add(name: str, amount: int = 1) -> None:
    """Add to one figure; `name` must be one of LABELS."""
    if name not in LABELS:
        raise KeyError(f"unknown reliability figure {name!r}")
    with _lock:
        _figures[name] += amount


def merge(values: dict[str, int]) -> None:
    """Add the figures another process counted (a pytest-xdist worker's)."""
    for name, amount in values.items():
        add(name, amount)


def figures() -> dict[str, int]:
    with _lock:
        return {name: _figures[name] for name in LABELS}


def summary_lines() -> list[str]:
    """One line per figure, or nothing when no reliability test ran."""
    values = figures()
    if not any(values.values()):
        return []
    return [f"{values[name]:>10}  {label}" for name, label in LABELS.items()]
