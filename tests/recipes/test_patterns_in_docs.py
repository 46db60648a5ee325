"""docs/patterns.md, the recipes and "Scaling past one server", prints exactly the SQL
the recipe tests run: each recipe, rendered with the literals (or, where it is prepared
once and executed by several recipes, the parameters) the page uses, must appear on the
page character for character, and only once (tests/docs/test_docs.py then runs it)."""

from __future__ import annotations

import pytest

from tests.docblocks import PATTERNS
from tests.statements import (
    CLAIM,
    CLEANUP_LOOP,
    GUARDED_SAVE,
    LOOKUP,
    RANGE_WITH_KEY_PK,
    RECORD_RESULT,
    TRY_LOCK,
    render,
)

# The keys of the guide's examples.
CLAIMED = "'d7a4c1e2-5b3f-4e8a-9c61-0f2b7e9a4d13'"
IN_FLIGHT = "'3c9e8f21-7a4d-4b6e-8f10-2d5c6b7a8e94'"
REUSED = "'8e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b'"
EXPIRED = "'61b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d'"
SHORT_LIVED = "'a5d6e7f8-0912-4b3c-9d4e-5f6a7b8c9d0e'"

# Printed once, prepared; the recipes run them with EXECUTE and these keys.
CLAIM_PREPARED = "PREPARE idempotency_claim (UUID, TEXT) AS\n" + render(CLAIM, request_id="$1", operation="$2")
GUARDED_SAVE_PREPARED = (
    "PREPARE idempotency_guarded_save (UUID, VARCHAR, TEXT, INTEGER, DOUBLE PRECISION) AS\n"
    + render(GUARDED_SAVE, request_id="$1", operation="$2", result_payload="$3", status_code="$4", ttl_hours="$5")
)

DOCUMENTED = {
    "claim, prepared (recipes 1, 3, 5)": CLAIM_PREPARED,
    "result (recipe 1)": render(
        RECORD_RESULT, request_id=CLAIMED, result_payload="""'{"payment_id": 1}'""", status_code="201"
    ),
    "lookup (recipe 1)": render(LOOKUP, request_id=CLAIMED),
    "try lock (recipe 1, 409)": render(TRY_LOCK, request_id=IN_FLIGHT),
    "guarded save, prepared (recipe 2)": GUARDED_SAVE_PREPARED,
    "cleanup loop (recipe 4)": CLEANUP_LOOP,
    "range partitions (scaling)": RANGE_WITH_KEY_PK,
}

# Each recipe runs the prepared statement with its own key and values.
EXECUTED = {
    "claim (recipe 1)": f"EXECUTE idempotency_claim({CLAIMED}, 'payment');\n",
    "claim (recipe 1, 409)": f"EXECUTE idempotency_claim({IN_FLIGHT}, 'transfer');\n",
    "guarded save (recipe 2)": f"""EXECUTE idempotency_guarded_save({REUSED}, 'payment', '{{"payment_id": 2}}', 201, 72);\n""",
    "guarded save refused (recipe 2)": (
        f"""EXECUTE idempotency_guarded_save({REUSED}, 'login', '{{"session": "s-1"}}', 200, 1);\n"""
    ),
    "claim over an expired record (recipe 3)": f"EXECUTE idempotency_claim({EXPIRED}, 'login');\n",
    "claim with its lifetime (recipe 5)": f"EXECUTE idempotency_claim({SHORT_LIVED}, 'auth');\n",
}


def sections() -> str:
    return PATTERNS.read_text()


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_the_guide_prints_the_sql_the_tests_run(name: str) -> None:
    assert DOCUMENTED[name] + ";\n" in sections(), f"the guide's {name} differs from the SQL its tests run"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_recipe_is_printed_once(name: str) -> None:
    body = DOCUMENTED[name].split("\n", 1)[1] if DOCUMENTED[name].startswith("PREPARE") else DOCUMENTED[name]
    assert sections().count(body) == 1, f"the {name} is printed once; other recipes execute it"


@pytest.mark.parametrize("name", sorted(EXECUTED))
def test_each_recipe_runs_the_prepared_statement_with_its_key(name: str) -> None:
    assert EXECUTED[name] in sections(), f"the {name}: {EXECUTED[name].strip()!r} is not on the page"
