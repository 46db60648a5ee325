"""The functions and operators another role plants on the search_path to catch our calls
(tests/fixtures/*_shadowing_traps.sql): planting them, and which of them ran.

Each trap raises a WARNING `shadowing trap ran: <its signature>` and counts its call on the
sequence public.shadowing_trap_calls, which a rollback does not undo."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.helpers import FIXTURES, apply_all

TRAP_RAN = "shadowing trap ran"
HOSTILE_TRAPS = FIXTURES / "hostile_shadowing_traps.sql"


def record(diagnostic: psycopg.errors.Diagnostic, ran: list[str]) -> None:
    """Append the signature of the trap a notice says ran, if it says so."""
    message = diagnostic.message_primary or ""
    if message.startswith(TRAP_RAN):
        ran.append(message.removeprefix(f"{TRAP_RAN}: "))


def watch(conn: psycopg.Connection) -> list[str]:
    """The list the signature of every trap that runs on this connection is appended to."""
    ran: list[str] = []
    conn.add_notice_handler(lambda diagnostic: record(diagnostic, ran))
    return ran


def plant(conn: psycopg.Connection, paths: tuple[Path, ...]) -> list[str]:
    """Plant the traps of these fixtures (as a superuser: the role, its CREATE on public, the
    traps); return the list the traps that run on this connection are appended to."""
    apply_all(conn, paths)
    return watch(conn)


def trap_calls(conn: psycopg.Connection) -> int:
    """How many trap calls the sequence counted, rolled back or not."""
    row = conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.shadowing_trap_calls")
    found = row.fetchone()
    assert found is not None
    return int(found[0])
