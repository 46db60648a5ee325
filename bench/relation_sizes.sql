-- Bytes of the table, of each of its indexes, and of all of it together.
SELECT 'table', pg_table_size('idempotency_records')
UNION ALL
SELECT c.relname::text, pg_relation_size(c.oid)
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'idempotency_records'::regclass
UNION ALL
SELECT 'total', pg_total_relation_size('idempotency_records')
