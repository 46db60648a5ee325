"""The guide's operational claims, each proven on a real server: what REINDEX blocks, how an invalid
index shows, what pg_stat_reset() costs autovacuum, what the new-keys alert cannot see, what a
delete leaves behind, what holds back vacuum, and the tenant-key migration's steps."""

from __future__ import annotations

import psycopg
import pytest

from tests import helpers, roles, vacuum
from tests.docblocks import GUIDE, QUERIES, block_with, parse_blocks, prose, run_block
from tests.helpers import ROOT, fixture_sql
from tooling import records
from tooling.records import DAY
from tooling.servers import Server

STATES = ROOT / "tests" / "fixtures" / "states"


def live(conn: psycopg.Connection, rows: int) -> None:
    records.insert_many(conn, rows, records.live(lifetime=DAY))


def expired(conn: psycopg.Connection, rows: int, payload: str = "{}") -> None:
    records.insert_many(conn, rows, records.expired(result_payload=payload))


COUNTERS = ("n_dead_tup", "n_mod_since_analyze", "n_tup_ins", "n_tup_upd")


def counters(conn: psycopg.Connection, until: str = "TRUE") -> dict[str, int]:
    """The table's statistics counters, by name, once `until` (a condition on them) holds."""
    return dict(zip(COUNTERS, vacuum.statistics(conn, until, COUNTERS), strict=True))


def test_reindex_table_blocks_reads_of_the_table_until_it_ends(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    live(conn, 10)
    with pg_server.connect(database) as reindex:
        reindex.execute("REINDEX TABLE idempotency_records")  # its transaction stays open
        try:
            with pg_server.connect(database, autocommit=True) as reader:
                reader.execute("SET lock_timeout = '50ms'")
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    reader.execute(block_with("AND expires_at > now();\n-- returns:", GUIDE).text)
        finally:
            reindex.rollback()
    run_block(conn, block_with("REINDEX TABLE CONCURRENTLY", GUIDE))
    run_block(conn, block_with("REINDEX INDEX CONCURRENTLY", GUIDE))


REBUILD = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_idempotency_expires ON idempotency_records USING btree (expires_at);"
)


def test_an_invalid_index_is_listed_invalid_and_the_guide_repairs_it(conn: psycopg.Connection) -> None:
    diagnosis = block_with("i.indisvalid AS valid", GUIDE)
    (rebuild,) = [block for block in parse_blocks(GUIDE) if block.text.strip() == REBUILD]
    conn.execute(fixture_sql(STATES / "expires_index_invalid.sql"))
    listed = {row[0]: row[1] for row in conn.execute(diagnosis.text)}
    assert listed["idx_idempotency_expires"] is False, "the invalid index is listed, with valid = f"
    with pytest.raises(AssertionError, match="rows"):
        run_block(conn, diagnosis)  # not the result the guide prints (every index valid)
    run_block(conn, rebuild)
    with pytest.raises(AssertionError, match="rows"):
        run_block(conn, diagnosis)  # IF NOT EXISTS took the invalid index for present
    run_block(conn, block_with("DROP INDEX CONCURRENTLY IF EXISTS idx_idempotency_expires", GUIDE))
    run_block(conn, rebuild)
    run_block(conn, diagnosis)  # now the guide's result: three valid indexes, their definitions


def test_a_runner_transaction_refuses_create_index_concurrently(conn: psycopg.Connection) -> None:
    conn.execute("DROP INDEX idx_idempotency_expires")
    with pytest.raises(psycopg.errors.ActiveSqlTransaction), conn.transaction():  # SQLSTATE 25001
        conn.execute(REBUILD)


def test_pg_stat_reset_zeroes_what_autovacuum_reads(conn: psycopg.Connection) -> None:
    expired(conn, 100)
    conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()")
    before = counters(conn, "n_dead_tup >= 100")
    assert before["n_mod_since_analyze"] >= 100
    conn.execute("SELECT pg_stat_reset()")
    after = counters(conn)
    assert (after["n_dead_tup"], after["n_mod_since_analyze"]) == (0, 0), (
        f"pg_stat_reset() zeroes the counts autovacuum decides by: {before} -> {after}"
    )
    assert conn.execute("SELECT count(*) FROM idempotency_records").fetchone() == (0,), "the rows were deleted"


def test_the_new_keys_alert_does_not_see_retries_and_n_tup_upd_does(conn: psycopg.Connection) -> None:
    alert = block_with("AS inserts_per_minute", QUERIES)
    upsert = block_with("PREPARE idempotency_save (UUID", QUERIES)
    run_block(conn, upsert)
    before = counters(conn)
    for _ in range(10):  # one request, then nine retries of the same key
        conn.execute("EXECUTE idempotency_save('3d6f1a2b-0c4e-4f8a-9b7d-1e2f3a4b5c6d', 'payment', '{}', 201, 24)")
    assert conn.execute(alert.text).fetchone() == (1,), "the alert counts the key once, not its nine retries"
    after = counters(conn, f"n_tup_upd >= {before['n_tup_upd'] + 9}")
    assert after["n_tup_ins"] - before["n_tup_ins"] == 1
    assert after["n_tup_upd"] - before["n_tup_upd"] == 9, "each retry of the upsert is an update"


MARKER = "payload-that-was-deleted-4711"


def in_table_file(conn: psycopg.Connection, marker: str = MARKER) -> bool:
    conn.execute("CHECKPOINT")  # the table's pages, written to its file
    row = conn.execute("SELECT pg_read_binary_file(pg_relation_filepath('idempotency_records'))").fetchone()
    assert row is not None
    return marker.encode() in row[0]


def deleted_and_vacuumed(conn: psycopg.Connection) -> None:
    """A record holding MARKER among 50 live ones, deleted by the cleanup, then vacuumed: its
    bytes still in the table's file."""
    live(conn, 50)
    expired(conn, 1, MARKER)
    assert in_table_file(conn)
    assert conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone() == (1,)
    assert in_table_file(conn), "after the cleanup: a dead row"
    conn.execute("VACUUM idempotency_records")
    assert in_table_file(conn), "after VACUUM: free space, not overwritten"


def test_a_deleted_payload_stays_in_the_table_file_until_vacuum_full(conn: psycopg.Connection) -> None:
    deleted_and_vacuumed(conn)
    conn.execute("VACUUM FULL idempotency_records")
    assert not in_table_file(conn), "VACUUM FULL writes a new file without it"


def test_cluster_too_writes_a_file_without_a_deleted_payload(conn: psycopg.Connection) -> None:
    """The guide named VACUUM FULL alone; CLUSTER rewrites the table as well."""
    deleted_and_vacuumed(conn)
    conn.execute("CLUSTER idempotency_records USING idempotency_records_pkey")
    assert not in_table_file(conn), "CLUSTER writes a new file without it"
    text = prose()
    assert "only a rewrite of the table, `VACUUM FULL` or `CLUSTER`" in text, "the guide names both"


def test_the_upsert_role_can_empty_the_table_with_delete_but_not_truncate(conn: psycopg.Connection, role: str) -> None:
    """The guide said the role "cannot empty" the table: it cannot TRUNCATE, but DELETE, which its
    grants hold on the whole table, removes every record."""
    roles.grant(conn, role, *roles.UPSERT_GRANTS)
    live(conn, 20)
    with roles.acting_as(conn, role):
        assert helpers.sqlstate_of(conn, "TRUNCATE idempotency_records") == "42501", "TRUNCATE is refused"
        conn.execute("DELETE FROM idempotency_records")
    assert helpers.count(conn) == 0, "DELETE emptied it"
    text = prose()
    assert "It cannot empty" not in text, "the guide no longer says the role cannot empty the table"
    assert "it can delete any record, every one of them with one `DELETE`" in text


def test_an_index_cancelled_before_it_was_ready_is_not_updated_by_writes_and_045_refuses_it(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """The guide said every write updates an index a failed CREATE INDEX CONCURRENTLY left, and that
    045 takes it for present. One cancelled while it waited for a writer (its first phase) is
    invalid and not ready: writes skip it. One that failed once ready (the fixture's) is updated.
    045 stops on either with 55000."""
    conn.execute("DROP INDEX idx_idempotency_operation")
    with pg_server.connect(database) as writer:
        live(writer, 1)  # its transaction stays open
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("CREATE INDEX CONCURRENTLY idx_idempotency_operation ON idempotency_records (operation)")
        conn.execute("RESET lock_timeout")
        writer.rollback()
    state = "SELECT indisready, indisvalid, pg_relation_size(indexrelid) FROM pg_index WHERE indexrelid = %s::regclass"
    assert conn.execute(state, ("idx_idempotency_operation",)).fetchone() == (False, False, 0)
    live(conn, 2000)
    assert conn.execute(state, ("idx_idempotency_operation",)).fetchone() == (False, False, 0), "no write updated it"
    conn.execute(fixture_sql(STATES / "expires_index_invalid.sql"))  # invalid, but ready
    size = conn.execute(state, ("idx_idempotency_expires",)).fetchone()
    live(conn, 2000)
    grown = conn.execute(state, ("idx_idempotency_expires",)).fetchone()
    assert size is not None and grown is not None and grown[:2] == (True, False) and grown[2] > size[2], (
        f"an invalid index that is ready is updated by writes: {size} -> {grown}"
    )
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
        helpers.apply(conn, helpers.UP_045)
    assert "is invalid" in str(refused.value), str(refused.value)
    text = prose()
    assert "every write updates it" not in text and "045 stops on it with SQLSTATE 55000" in text


def test_an_open_transaction_holds_back_vacuum_and_the_guide_lists_it(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    with pg_server.connect(database) as report:
        report.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT count(*) FROM idempotency_records")  # its snapshot stays open
        expired(conn, 100)
        conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()")
        conn.execute("VACUUM idempotency_records")
        assert counters(conn)["n_dead_tup"] >= 100, "vacuum could not remove the rows the open snapshot may see"
        listed = vacuum.holders(conn, vacuum.guide_holders())
        assert ("session", str(report.info.backend_pid)) in listed, listed
        report.rollback()
    conn.execute("VACUUM idempotency_records")
    assert counters(conn, "n_dead_tup = 0")["n_dead_tup"] == 0, "once it ended, vacuum removed them"


TENANT_STEPS = (
    "ALTER TABLE idempotency_records ADD COLUMN tenant_id UUID",
    "UPDATE idempotency_records SET tenant_id = '00000000-0000-0000-0000-00000000000a'",
    "ALTER TABLE idempotency_records ADD CONSTRAINT chk_tenant_id_not_null CHECK (tenant_id IS NOT NULL) NOT VALID",
    "ALTER TABLE idempotency_records VALIDATE CONSTRAINT chk_tenant_id_not_null",
)
SAVE = """
    INSERT INTO idempotency_records (tenant_id, request_id, operation, result_payload, expires_at)
    VALUES ('00000000-0000-0000-0000-00000000000a', '6e7f8a9b-0c1d-4e2f-8a3b-4c5d6e7f8a9b', 'payment', '{}',
            now() + INTERVAL '1 day')
    ON CONFLICT ARBITER DO UPDATE SET result_payload = EXCLUDED.result_payload
"""


def test_the_tenant_key_migration_steps(conn: psycopg.Connection) -> None:
    live(conn, 20)
    for step in TENANT_STEPS:
        conn.execute(step)
    notices: list[str] = []
    conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
    conn.execute("SET client_min_messages = debug1")
    conn.execute("ALTER TABLE idempotency_records ALTER COLUMN tenant_id SET NOT NULL")
    conn.execute("RESET client_min_messages")
    assert any("sufficient to prove that it does not contain nulls" in n for n in notices), (
        f"SET NOT NULL used the validated check instead of scanning the table: {notices}"
    )
    conn.execute(
        "CREATE UNIQUE INDEX CONCURRENTLY idempotency_records_tenant_pkey ON idempotency_records (tenant_id, request_id)"
    )
    conn.execute(SAVE.replace("ARBITER", "(tenant_id, request_id)"))  # works once the index exists
    with conn.transaction():
        conn.execute("ALTER TABLE idempotency_records DROP CONSTRAINT idempotency_records_pkey")
        conn.execute(
            "ALTER TABLE idempotency_records ADD CONSTRAINT idempotency_records_tenant_pkey "
            "PRIMARY KEY USING INDEX idempotency_records_tenant_pkey"
        )
    conn.execute(SAVE.replace("ARBITER", "(tenant_id, request_id)"))
    with pytest.raises(psycopg.errors.InvalidColumnReference):  # 42P10
        conn.execute(SAVE.replace("ARBITER", "(request_id)"))


def test_a_single_delete_writes_its_wal_as_it_goes_not_at_commit(pg_server: Server, database: str) -> None:
    """The WAL the DELETE statement itself wrote (EXPLAIN's WAL counters, this statement only),
    read inside its transaction, before the commit."""
    with pg_server.connect(database) as conn:
        expired(conn, 5000)
        conn.commit()
        row = conn.execute(
            "EXPLAIN (ANALYZE, WAL, FORMAT JSON) DELETE FROM idempotency_records WHERE expires_at <= now()"
        ).fetchone()
        assert row is not None
        plan = row[0][0]["Plan"]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS, "not committed yet"
        conn.commit()
    assert plan["WAL Records"] >= 5000, f"one WAL record per deleted row, before the commit: {plan['WAL Records']}"
    assert plan["WAL Bytes"] >= 5000 * 50, f"{plan['WAL Bytes']} bytes of WAL for 5,000 rows, before the commit"
