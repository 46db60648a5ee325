"""The docs runner (tests/docblocks.py) itself: it understands every annotation and refuses the
rest, runs each kind of block, reports a wrong block by file and line, compares stated results,
plans and psql output, runs shell blocks against the test database, and finds a long statement
printed twice."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import psycopg
import pytest

from tests.docblocks import (
    drop_roles,
    long_statements,
    normalised,
    parse_annotation,
    parse_blocks,
    parse_shells,
    plan_shape,
    run_block,
    run_psql_block,
    run_shell,
)
from tooling.servers import Server


def test_annotations_are_understood() -> None:
    for directive in (
        "error 23514",
        "psql",
        "role app_user",
        "pg_cron",
        "fresh",
        "role app; error 42501",
        "result",
        "plan",
        "not-run needs a Docker container",
        "fresh; data guide_40k",
    ):
        try:
            parse_annotation(directive, "here")
        except AssertionError as error:
            assert "no fixture" in str(error), error
    for wrong in (
        "errors 23514",
        "error 2351",
        "role",
        "skip",
        "psql; error 42501",
        "role a; role b",
        "not-run",
        "result; fresh",
        "data x",
    ):
        with pytest.raises(AssertionError):
            parse_annotation(wrong, "here")


SELF_TEST = """\
<!-- test: error 23514 -->
```sql
INSERT INTO idempotency_records (request_id, operation, result_payload, expires_at)
VALUES ('00000000-0000-0000-0000-0000000000d1', 'x', '{}', now() - INTERVAL '1 hour');
```

```sql
CREATE ROLE ROLE_NAME_HERE NOLOGIN;
GRANT SELECT ON idempotency_records TO ROLE_NAME_HERE;
```

<!-- test: role ROLE_NAME_HERE -->
```sql
SELECT count(*) FROM idempotency_records;
```

<!-- test: role ROLE_NAME_HERE; error 42501 -->
```sql
DELETE FROM idempotency_records;
```

<!-- test: psql -->
```sql
\\d idempotency_records
```
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_the_runner_runs_each_kind_of_block(
    tmp_path: Path, pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    role = f"docs_selftest_{os.getpid()}"
    blocks = parse_blocks(_write(tmp_path, SELF_TEST.replace("ROLE_NAME_HERE", role)))
    assert [(b.place, b.role, b.error) for b in blocks] == [
        ("sequence", None, "23514"),
        ("sequence", None, None),
        ("sequence", role, None),
        ("sequence", role, "42501"),
        ("psql", None, None),
    ]
    try:
        for block in blocks[:4]:
            run_block(conn, block)
        run_psql_block(pg_server, database, blocks[4])
    finally:
        drop_roles(conn, {role})


STATED = """\
```sql
INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at)
VALUES ('00000000-0000-0000-0000-0000000000e1', 'x', '{}', now() - INTERVAL '2 hours', now() - INTERVAL '1 hour');
SELECT deleted_count FROM cleanup_expired_idempotency_records();
-- returns: deleted_count = 1
```

```sql
SELECT operation FROM idempotency_records;
-- returns: no row
```

```sql
SELECT 1 AS a, 'two' AS b UNION ALL SELECT 3, NULL;
```

<!-- test: result -->
```text
 a |  b
---+-----
 1 | two
 3 |
(2 rows)
```
"""


def test_a_stated_result_that_holds_passes(tmp_path: Path, conn: psycopg.Connection) -> None:
    blocks = parse_blocks(_write(tmp_path, STATED))
    assert [b.compared for b in blocks] == [True, True, True]
    for block in blocks:
        run_block(conn, block)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<!-- test: error 42501 -->\n```sql\nSELECT 1;\n```\n",
            r"doc.md:2: block should fail with SQLSTATE 42501, but it succeeded",
        ),
        (
            "<!-- test: error 42501 -->\n```sql\nSELECT 1/0;\n```\n",
            r"doc.md:2: block should fail with SQLSTATE 42501, failed with 22012",
        ),
        (
            "<!-- test: error 22012 -->\n```sql\nSELECT 1/0;\nSELECT 1;\n```\n",
            r"doc.md:2: block should fail with SQLSTATE 22012 in its last statement, but an earlier one failed",
        ),
        ("text\n\n```sql\nSELECT * FROM missing;\n```\n", r"doc.md:3: block failed with SQLSTATE 42P01"),
        ("```sql\nBEGIN;\n```\n", r"doc.md:1: block left a transaction open"),
        ("<!-- test: fresh -->\n\n```sql\nSELECT 1;\n```\n", r"doc.md:1: a test annotation must sit right before"),
        ("<!-- test: maybe -->\n```sql\nSELECT 1;\n```\n", r"doc.md:1: unknown test annotation 'maybe'"),
        (
            "```sql\nSELECT 149 AS deleted_count;\n-- returns: deleted_count = 150\n```\n",
            r"doc.md:1: column deleted_count: the text says '150', got '149'",
        ),
        ("```sql\nSELECT 1 AS a;\n-- returns: no row\n```\n", r"doc.md:1: the text says no row comes back"),
        (
            "```sql\nSELECT 1 AS a;\n-- returns: a = 1\nSELECT 2;\n```\n",
            r"doc.md:1: `-- returns:` must close the block",
        ),
        (
            "```sql\nSELECT 1 AS a;\n```\n\n<!-- test: result -->\n```text\n a\n---\n 2\n```\n",
            r"doc.md:6: rows \[\('2',\)\], the block returned \[\('1',\)\]",
        ),
        (
            "```sql\nSELECT 1 AS a;\n```\n```ini\nx = 1\n```\n<!-- test: result -->\n```text\n a\n---\n 1\n```\n",
            r"doc.md:8: a `result` block must follow the ```sql block",
        ),
        (
            "```sql\nEXPLAIN SELECT 1 FROM idempotency_records WHERE request_id = gen_random_uuid();\n```\n\n"
            "<!-- test: plan -->\n```text\nHash Join  (cost=0.00..1.00 rows=1 width=4)\n```\n",
            r"doc.md:6: the plan in the text is not the plan .*doc.md:1 printed",
        ),
    ],
)
def test_the_runner_reports_a_wrong_block_by_file_and_line(
    tmp_path: Path, conn: psycopg.Connection, text: str, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        for block in parse_blocks(_write(tmp_path, text)):
            run_block(conn, block)


def test_plan_shape_keeps_nodes_and_drops_costs_times_and_conditions() -> None:
    printed = [
        "Delete on idempotency_records  (cost=39.64..1581.98 rows=0 width=0) (actual time=0.7..0.7 rows=0 loops=1)",
        "  ->  Bitmap Heap Scan on idempotency_records  (cost=39.64..1581.98 rows=1980 width=6)",
        "        Recheck Cond: (expires_at <= now())",
        "        ->  Bitmap Index Scan on idx_idempotency_expires  (cost=0.00..39.14 rows=1980 width=0)",
        "Planning Time: 0.043 ms",
    ]
    assert plan_shape(printed) == [
        "Delete on idempotency_records",
        "Bitmap Heap Scan on idempotency_records",
        "Bitmap Index Scan on idx_idempotency_expires",
    ]


def test_a_failing_psql_block_names_its_sqlstate(tmp_path: Path, pg_server: Server, database: str) -> None:
    (block,) = parse_blocks(_write(tmp_path, "<!-- test: psql -->\n```sql\nSELECT * FROM missing;\n```\n"))
    with pytest.raises(AssertionError, match=r"doc.md:2: psql block failed with SQLSTATE 42P01"):
        run_psql_block(pg_server, database, block)


@pytest.mark.parametrize("command", ["\\df no_such_function", "\\dt no_such_table", "\\d no_such_table"])
def test_a_psql_meta_command_that_finds_nothing_fails(
    tmp_path: Path, pg_server: Server, database: str, command: str
) -> None:
    (block,) = parse_blocks(_write(tmp_path, f"<!-- test: psql -->\n```sql\n{command}\n```\n"))
    with pytest.raises(AssertionError, match=r"doc.md:2: (a meta-command found nothing|psql block failed)"):
        run_psql_block(pg_server, database, block)


def test_a_psql_block_output_is_compared(tmp_path: Path, pg_server: Server, database: str) -> None:
    text = "<!-- test: psql -->\n```sql\n\\df cleanup_expired_idempotency_records\n```\n\n<!-- test: result -->\n```text\n{}\n```\n"
    ok = parse_blocks(_write(tmp_path, text.format("...\n(1 row)")))
    run_psql_block(pg_server, database, ok[0])
    wrong = parse_blocks(_write(tmp_path, text.format("...\n(2 rows)")))
    with pytest.raises(AssertionError, match=r"doc.md:7: psql did not print '\(2 rows\)'"):
        run_psql_block(pg_server, database, wrong[0])


SHELLS = """\
```bash
psql -v ON_ERROR_STOP=1 -1 -h localhost -U postgres -d jive_money -f sql/046_create_idempotency_cleanup_job.sql
docker exec -i jive-postgres psql -v ON_ERROR_STOP=1 -U postgres -d jive_money < sql/046_create_idempotency_cleanup_job.sql
psql -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -c "SELECT deleted_count FROM cleanup_expired_idempotency_records();"
make verify
```

<!-- test: not-run needs a cluster of three servers -->
```bash
psql -h node1 -c 'SELECT 1'
```

```bash
psql -v ON_ERROR_STOP=1 -c "SELECT * FROM missing"
```

```bash
make bench
```
"""


def test_shell_blocks_run_with_psql_against_the_test_database(tmp_path: Path, pg_server: Server, database: str) -> None:
    shells = parse_shells(_write(tmp_path, SHELLS))
    assert [(s.line, s.not_run) for s in shells] == [(1, None), (9, "needs a cluster of three servers"), (13, None)]
    done = run_shell(pg_server, database, shells[0], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "deleted_count" in done.stdout, done.stdout
    failed = run_shell(pg_server, database, shells[2], tmp_path)
    assert failed.returncode != 0 and "missing" in failed.stderr, "a failing psql command fails the block"


def test_a_statement_printed_twice_is_found(tmp_path: Path) -> None:
    statement = "SELECT\n    1,\n    2,\n    3\nFROM idempotency_records;\n"
    path = _write(tmp_path, f"```sql\n{statement}```\n\n```sql\n-- again\n{statement}```\n")
    assert [len(where) for where in long_statements((path,)).values()] == [2]


def test_a_statement_printed_again_inside_a_do_block_is_found(tmp_path: Path) -> None:
    statement = "DELETE FROM idempotency_records\nWHERE\n    expires_at\n    <= now()\n    AND true"
    inner = textwrap.indent(statement, " " * 8)
    loop = f"DO $cleanup$\nDECLARE\n    n BIGINT;\nBEGIN\n    LOOP\n{inner};\n        EXIT;\n    END LOOP;\nEND\n$cleanup$;\n"
    path = _write(tmp_path, f"```sql\n{statement};\n```\n\n```sql\n{loop}```\n")
    assert [len(where) for where in long_statements((path,)).values() if len(where) > 1] == [2]


CLAIMED_TWICE = """\
```sql
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ('d7a4c1e2-5b3f-4e8a-9c61-0f2b7e9a4d13', 'payment', '{"payment_id": 1}', 201, now() + INTERVAL '72 hours')
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,  -- the same key, another operation
    expires_at = EXCLUDED.expires_at
WHERE idempotency_records.expires_at <= now();
```

```sql
insert into idempotency_records (request_id, operation, result_payload, status_code, expires_at)
values ('3c9e8f21-7a4d-4b6e-8f10-2d5c6b7a8e94', 'login', '{"session": "it''s -- s-1"}', 200,
        now() + interval '1 hour')
on conflict (request_id) do update set
    operation = excluded.operation,
    expires_at = excluded.expires_at
where idempotency_records.expires_at <= now();
```

```sql
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ('3c9e8f21-7a4d-4b6e-8f10-2d5c6b7a8e94', 'login', '{}', 200, now() + INTERVAL '1 hour')
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    status_code = EXCLUDED.status_code
WHERE idempotency_records.expires_at <= now();
```

```sql
-- the first, prepared: its parameters stand for the literals
PREPARE claim (UUID, TEXT, TEXT, INTEGER) AS
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ($1, $2, $3, $4, now() + INTERVAL '72 hours')
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    expires_at = EXCLUDED.expires_at
WHERE idempotency_records.expires_at <= now();
```
"""


def test_a_statement_that_differs_only_in_literals_and_layout_is_found(tmp_path: Path) -> None:
    path = _write(tmp_path, CLAIMED_TWICE)
    copies = sorted(len(where) for where in long_statements((path,)).values())
    # The first two differ in the key, the operation, the payload, the status, the lifetime, a
    # comment, the case of the keywords and the line breaks; the third sets another column; the
    # fourth prepares the first with parameters.
    assert copies == [1, 3], f"expected one statement printed three times and one once, got {copies}"


def test_normalised_keeps_names_and_parameters_apart_from_literals() -> None:
    assert normalised("SELECT t1, $1, 2 FROM x") == "select t1,?,? from x"
    assert normalised("SELECT 'a -- b', 1.5 -- c\n, 'it''s'") == "select ?,?,?"
