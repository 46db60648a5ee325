"""The managed-service profile (tests/managed_service.py): one server per pytest worker, built by
the superuser with the admin role; each test gets the application database, created by the admin,
and everything it made removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import managed_service
from tests.managed_service import Managed
from tooling import servers


@pytest.fixture(scope="session")
def managed_server() -> Iterator[tuple[servers.Server, servers.Server]]:
    """The superuser's login and the admin's, on a PostgreSQL 15 server with pg_cron in postgres."""
    missing = servers.pg_cron_missing()
    if missing is not None:
        pytest.skip(missing)
    settings = {**servers.FAST_SETTINGS, **managed_service.SETTINGS}
    with servers.pg_cron_server(
        "idempotency-managed-", managed_service.CRON_DATABASE, background_workers=False, settings=settings
    ) as superuser:
        yield superuser, managed_service.build(superuser)


@pytest.fixture
def managed(managed_server: tuple[servers.Server, servers.Server]) -> Iterator[Managed]:
    """The application database jive_money, created and owned by the admin; nothing applied yet."""
    superuser, admin = managed_server
    with managed_service.application_database(superuser, admin) as profile:
        yield profile
