"""docs/patterns.md, the recipes and "Scaling past one server", prints exactly the SQL
the recipe tests run: each recipe, rendered with the literals the guide uses, must
appear in the guide character for character (tests/test_docs.py then runs it)."""

from __future__ import annotations

import pytest

from tests.patterns import (
    CLAIM,
    CLEANUP_LOOP,
    GUARDED_SAVE,
    LOOKUP,
    PATTERNS,
    RECORD_RESULT,
    TRY_LOCK,
    render,
)
from tests.test_partitioning import RANGE_WITH_KEY_PK

# The keys of the guide's examples.
CLAIMED = "'d7a4c1e2-5b3f-4e8a-9c61-0f2b7e9a4d13'"
IN_FLIGHT = "'3c9e8f21-7a4d-4b6e-8f10-2d5c6b7a8e94'"
REUSED = "'8e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b'"
EXPIRED = "'61b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d'"
SHORT_LIVED = "'a5d6e7f8-0912-4b3c-9d4e-5f6a7b8c9d0e'"

DOCUMENTED = {
    "claim (recipe 1)": render(CLAIM, request_id=CLAIMED, operation="'payment'"),
    "result (recipe 1)": render(
        RECORD_RESULT, request_id=CLAIMED, result_payload="""'{"payment_id": 1}'""", status_code="201"
    ),
    "lookup (recipe 1)": render(LOOKUP, request_id=CLAIMED),
    "try lock (recipe 1, 409)": render(TRY_LOCK, request_id=IN_FLIGHT),
    "claim (recipe 1, 409)": render(CLAIM, request_id=IN_FLIGHT, operation="'transfer'"),
    "guarded save (recipe 2)": render(
        GUARDED_SAVE,
        request_id=REUSED,
        operation="'payment'",
        result_payload="""'{"payment_id": 2}'""",
        status_code="201",
        ttl_hours="72",
    ),
    "guarded save refused (recipe 2)": render(
        GUARDED_SAVE,
        request_id=REUSED,
        operation="'login'",
        result_payload="""'{"session": "s-1"}'""",
        status_code="200",
        ttl_hours="1",
    ),
    "claim over an expired record (recipe 3)": render(CLAIM, request_id=EXPIRED, operation="'login'"),
    "cleanup loop (recipe 4)": CLEANUP_LOOP,
    "claim with its lifetime (recipe 5)": render(CLAIM, request_id=SHORT_LIVED, operation="'auth'"),
    "range partitions (scaling)": RANGE_WITH_KEY_PK,
}


def sections() -> str:
    return PATTERNS.read_text()


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_the_guide_prints_the_sql_the_tests_run(name: str) -> None:
    assert DOCUMENTED[name] + ";\n" in sections(), f"the guide's {name} differs from the SQL its tests run"
