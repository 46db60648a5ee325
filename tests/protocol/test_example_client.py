"""docs/examples/payment_client.py charges a payment provider exactly once per key, through a
provider that fails at random (before charging, or after charging with the response lost) and
workers that die at random (after the claim, or after the charge, before the completion), with
several clients sending each payment at once and retrying; run as a program, and imported.

The fake provider counts the charges it made per key: exactly once is one each. Every client of
a payment gets the same answer. The protocol's part is also checked on its own: without the
claim (the same handler, claim skipped) the provider's own deduplication still holds, but two
workers call it at once with the same key, which the claim's lease prevents."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psycopg
import pytest

from tests import figures
from tests.helpers import ROOT
from tests.protocol_calls import PAGE, stored
from tooling.servers import Server

EXAMPLE = ROOT / "docs" / "examples" / "payment_client.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("payment_client", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["payment_client"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_page_links_the_example() -> None:
    assert "[`docs/examples/payment_client.py`](examples/payment_client.py)" in PAGE.read_text()
    for name in ("handle_payment", "main", "demo", "FakeProvider"):
        assert callable(getattr(example(), name, None)), f"the example defines {name}"


def test_the_example_runs_as_a_program(pg_server: Server, protocol_database: str) -> None:
    env = {**pg_server.client_env(), "DATABASE_URL": pg_server.conninfo(protocol_database), "PAYMENTS": "6"}
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}{run.stderr}"
    assert "6 payments" in run.stdout and "every payment charged exactly once" in run.stdout, run.stdout


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_every_payment_is_charged_exactly_once_through_failures_and_crashes(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection, seed: int
) -> None:
    client = example()
    provider, answers = client.demo(
        lambda: pg_server.connect(protocol_database, autocommit=True),
        payments=12,
        workers=4,
        seed=seed,
        failure_rate=0.4,
        crash_rate=0.25,
        lease=dt.timedelta(milliseconds=200),
    )
    assert client.exactly_once(provider, answers) == [], "every payment charged once and answered one way"
    assert provider.calls > len(answers), f"the provider failed and was called again: {provider.calls} calls"
    figures.add("operations", provider.calls)
    for client_key in answers:
        key = pconn.execute("SELECT idempotency_key(%s::TEXT, %s::TEXT)", (f"tenant-{seed}", client_key)).fetchone()
        assert key is not None
        record = stored(pconn, key[0])
        assert record is not None and record.lease_token is None and record.status_code == 201, (
            f"{client_key}: its record holds the completed result"
        )
        assert record.result_payload == answers[client_key][0].body


class WatchedProvider:
    """A provider that notes the most calls it ever had at once for one key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most_at_once = 0
        self.charges: dict[str, str] = {}
        self.gate = threading.Barrier(2, timeout=0.5)

    def charge(self, idempotency_key: str, amount_cents: int, currency: str) -> dict[str, Any]:
        with self.lock:
            self.running[idempotency_key] = self.running.get(idempotency_key, 0) + 1
            self.most_at_once = max(self.most_at_once, self.running[idempotency_key])
            charge = self.charges.setdefault(idempotency_key, f"ch_{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(threading.BrokenBarrierError):
            self.gate.wait()  # a second call of the same key, if there is one, arrives meanwhile
        with self.lock:
            self.running[idempotency_key] -= 1
        return {"id": charge, "amount_cents": amount_cents}


def race(send: Callable[[], object]) -> None:
    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def test_the_claim_keeps_a_second_worker_from_calling_the_provider_at_the_same_time(
    pg_server: Server, protocol_database: str
) -> None:
    client = example()
    guarded, bare = WatchedProvider(), WatchedProvider()
    race(
        lambda: client.handle_payment(
            lambda: pg_server.connect(protocol_database, autocommit=True),
            "tenant-watch",
            "order-1",
            {"amount_cents": 500, "currency": "EUR"},
            guarded,
        )
    )
    assert guarded.most_at_once == 1, "with the claim, one worker at a time calls the provider for a key"
    race(lambda: bare.charge("order-1", 500, "EUR"))
    assert bare.most_at_once == 2, "without it, both do (the control)"
