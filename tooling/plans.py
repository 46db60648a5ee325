"""Reading EXPLAIN (FORMAT JSON) plan trees: used by the benchmark's notes and the tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan tree, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def describe_plan(node: dict[str, Any], depth: int = 0) -> str:
    """A short text rendering of a plan tree, for reports and assertion messages."""
    line = "  " * depth + node["Node Type"]
    if "Index Name" in node:
        line += f" using {node['Index Name']}"
    for key in ("Index Cond", "Filter", "Recheck Cond"):
        if key in node:
            line += f" [{key}: {node[key]}]"
    return "\n".join([line, *(describe_plan(child, depth + 1) for child in node.get("Plans", []))])
