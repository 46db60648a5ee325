-- The control of the lookup verdicts: pgbench -S's lookup plus a fixed amount of extra
-- server work (counting :extra_work rows of generate_series), so that its true cost over
-- pgbench -S is known from its server time. Whatever ratio a method reports for it
-- beside what the server times say is the method's own distortion: a mixed run of
-- several scripts on few cores, for one, compresses differences.
\set aid random(1, :anchor_rows)
SELECT abalance, (SELECT count(*) FROM generate_series(1, :extra_work)) AS extra
FROM pgbench_accounts
WHERE aid = :aid;
