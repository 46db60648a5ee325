"""Charge a payment provider exactly once per idempotency key, through crashes and retries.

The request handler of an API that takes payments, on the protocol of migration 047: claim the
key, call the provider (with the same key), store the result, and answer. Each database call is
its own transaction (an autocommit connection), and the provider is never called inside one.

    claimed      call the provider; complete (201 with the charge), or release on a failure
                 worth retrying (503: the client retries)
    replay       answer the stored result again (its status, and Idempotent-Replayed: true)
    in_progress  409 Conflict with Retry-After: another worker holds the key
    mismatch     422 Unprocessable Content: the key was used for another request

A worker that dies between the claim and the completion leaves its lease; the next worker to
claim the key after the lease runs out takes it over and calls the provider again with the same
key, and the provider returns the charge it made the first time. So the provider must
deduplicate on the key too, as payment providers do (Stripe's Idempotency-Key header).

Run it against a database with 045, 046 and 047 applied: it charges a fake provider that fails
at random, from several workers that crash at random, and says whether every payment was charged
exactly once (exit status 0) or not (1); PAYMENTS sets how many (40):

    DATABASE_URL=postgresql://app@db/jive_money python payment_client.py
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import psycopg

# Every argument cast to the type the function declares: a function of the same name that
# another role put in a schema on the search_path cannot then be a better match.
KEY = "SELECT idempotency_key(%s::TEXT, %s::TEXT)"
CLAIM = (
    "SELECT outcome, token, result_payload, status_code "
    "FROM idempotency_claim(%s::UUID, %s::VARCHAR, %s::BYTEA, %s::INTERVAL)"
)
COMPLETE = "SELECT idempotency_complete(%s::UUID, %s::UUID, %s::TEXT, %s::INTEGER, %s::INTERVAL)"
RELEASE = "SELECT idempotency_release(%s::UUID, %s::UUID)"

OPERATION = "payment"
LEASE = dt.timedelta(seconds=30)  # longer than the provider's timeout and retries, with room
TTL = dt.timedelta(hours=72)  # how long a payment's result is replayed
RETRY_AFTER_SECONDS = 1


class ProviderError(Exception):
    """The provider call failed: the charge may or may not have been made."""


class Provider(Protocol):
    def charge(self, idempotency_key: str, amount_cents: int, currency: str) -> dict[str, Any]: ...


class Crash(BaseException):
    """The worker's process dies here (a BaseException: no handler in the worker catches it)."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """The HTTP response: status, body and whether it is a replay."""

    status: int
    body: str
    replayed: bool = False


def problem(status: int, title: str, detail: str) -> str:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})


def request_hash(request: dict[str, Any]) -> bytes:
    """SHA-256 of the request's canonical JSON: keys sorted, no spaces, UTF-8."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def no_crash(point: str) -> None:
    """Where a test makes the worker die: after "claimed", after "charged"."""


def handle_payment(
    connect: Callable[[], psycopg.Connection],
    tenant: str,
    client_key: str,
    request: dict[str, Any],
    provider: Provider,
    *,
    lease: dt.timedelta = LEASE,
    ttl: dt.timedelta = TTL,
    crash: Callable[[str], None] = no_crash,
) -> Answer:
    """POST /payments with the header Idempotency-Key: client_key, for the tenant."""
    with connect() as conn:  # autocommit: every statement is its own transaction
        row = conn.execute(KEY, (tenant, client_key)).fetchone()
        assert row is not None
        key: uuid.UUID = row[0]
        claimed = conn.execute(CLAIM, (key, OPERATION, request_hash(request), lease)).fetchone()
        assert claimed is not None
        outcome, token, stored_payload, stored_status = claimed
        if outcome == "replay":
            return Answer(stored_status, stored_payload, replayed=True)
        if outcome == "in_progress":
            return Answer(409, problem(409, "Conflict", "A request with this key is in progress; retry later."))
        if outcome == "mismatch":
            return Answer(422, problem(422, "Unprocessable Content", "This key was used for another request."))
        crash("claimed")
        try:
            charge = provider.charge(str(key), request["amount_cents"], request["currency"])
        except ProviderError:
            # Worth retrying: give the key up now rather than when the lease runs out. Had the
            # provider charged, the retry's call with the same key returns that charge.
            conn.execute(RELEASE, (key, token))
            return Answer(503, problem(503, "Service Unavailable", "The payment provider failed; retry."))
        crash("charged")
        body = json.dumps({"charge": charge["id"], "amount_cents": charge["amount_cents"]}, sort_keys=True)
        stored = conn.execute(COMPLETE, (key, token, body, 201, ttl)).fetchone()
        if stored is None or not stored[0]:
            # The lease ran out and another worker took the key over: it will store the result
            # (its call with the same key returns this charge). Send the client back to it.
            return Answer(409, problem(409, "Conflict", "This request was taken over; retry later."))
        return Answer(201, body)


# --- the demo: a fake provider, workers that crash, clients that retry -------------------


class FakeProvider:
    """A payment provider that deduplicates on the idempotency key, as real ones do, and fails
    at random: before charging (nothing happened) or after (the charge is made, the response
    lost). It records every charge it made, by key."""

    def __init__(self, seed: int, failure_rate: float = 0.3) -> None:
        self.chance = random.Random(seed)
        self.failure_rate = failure_rate
        self.lock = threading.Lock()
        self.charges: dict[str, dict[str, Any]] = {}
        self.charged: dict[str, int] = {}  # charges made per key: exactly once means 1
        self.calls = 0

    def charge(self, idempotency_key: str, amount_cents: int, currency: str) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
            fate = self.chance.random()
            if fate < self.failure_rate / 2:
                raise ProviderError("connection refused")
            if idempotency_key not in self.charges:
                self.charges[idempotency_key] = {
                    "id": f"ch_{uuid.uuid4().hex[:12]}",
                    "amount_cents": amount_cents,
                    "currency": currency,
                }
                self.charged[idempotency_key] = self.charged.get(idempotency_key, 0) + 1
            if fate < self.failure_rate:
                raise ProviderError("read timeout")
            return self.charges[idempotency_key]


def random_crashes(seed: int, rate: float) -> Callable[[str], None]:
    chance = random.Random(seed)
    lock = threading.Lock()

    def crash(point: str) -> None:
        with lock:
            dies = chance.random() < rate
        if dies:
            raise Crash(point)

    return crash


def pay_until_answered(handle: Callable[[], Answer], deadline: float, pause: float = 0.05) -> Answer:
    """The client: send the request again after a crash (the connection reset), a 409 or a
    503, until it gets its payment's answer."""
    last: Answer | Crash | None = None
    while time.monotonic() < deadline:
        try:
            last = handle()
        except Crash as crash:
            last = crash
        else:
            if last.status in (200, 201, 422):
                return last
        time.sleep(pause)
    raise TimeoutError(f"no answer before the deadline; the last was {last!r}")


def demo(
    connect: Callable[[], psycopg.Connection],
    payments: int = 40,
    workers: int = 4,
    seed: int = 20251206,
    failure_rate: float = 0.3,
    crash_rate: float = 0.2,
    lease: dt.timedelta = dt.timedelta(milliseconds=500),
) -> tuple[FakeProvider, dict[str, list[Answer]]]:
    """Each payment is sent by `workers` clients at once, through workers that crash."""
    provider = FakeProvider(seed, failure_rate)
    crash = random_crashes(seed + 1, crash_rate)
    tenant = f"tenant-{seed}"
    answers: dict[str, list[Answer]] = {}
    deadline = time.monotonic() + 120

    def client(client_key: str, amount_cents: int) -> Answer:
        request = {"amount_cents": amount_cents, "currency": "EUR"}
        return pay_until_answered(
            lambda: handle_payment(connect, tenant, client_key, request, provider, lease=lease, crash=crash), deadline
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            f"order-{n}": [pool.submit(client, f"order-{n}", 100 + n) for _ in range(workers)] for n in range(payments)
        }
        for client_key, sent in futures.items():
            answers[client_key] = [future.result() for future in sent]
    return provider, answers


def exactly_once(provider: FakeProvider, answers: dict[str, list[Answer]]) -> list[str]:
    """What went wrong, if anything: a payment not charged exactly once, or answered two ways."""
    wrong = []
    for client_key, got in answers.items():
        bodies = {answer.body for answer in got}
        if len(bodies) != 1 or any(answer.status not in (200, 201) for answer in got):
            wrong.append(f"{client_key}: answered {[(a.status, a.body) for a in got]}")
    if sorted(provider.charged.values()) != [1] * len(answers):
        wrong.append(f"charges per key: {sorted(provider.charged.values())}, expected one each")
    return wrong


def main() -> int:
    url = os.environ["DATABASE_URL"]
    payments = int(os.environ.get("PAYMENTS", "40"))
    provider, answers = demo(lambda: psycopg.connect(url, autocommit=True), payments=payments)
    wrong = exactly_once(provider, answers)
    print(
        f"{len(answers)} payments, {provider.calls} provider calls, "
        f"{sum(provider.charged.values())} charges: "
        + ("every payment charged exactly once" if not wrong else "NOT exactly once:\n" + "\n".join(wrong))
    )
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
