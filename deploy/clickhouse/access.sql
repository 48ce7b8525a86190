-- cxledger's ClickHouse users as SQL, for a server whose users are managed with SQL (ClickHouse
-- Cloud, the Altinity operator, a server with access_management). The same users and grants as
-- users.d/cxledger.xml (compose). Run it once as an administrator, with the passwords set in the
-- environment of the shell, e.g.:
--
--   envsubst < deploy/clickhouse/access.sql | clickhouse-client --host HOST --user admin --ask-password --multiquery
--
-- On a cluster add ON CLUSTER <name> to each statement (or use replicated access storage), and
-- give cxledger_migrator `GRANT CLUSTER ON *.*` so its DDL may run ON CLUSTER. Database: cx.

CREATE DATABASE IF NOT EXISTS cx;

CREATE SETTINGS PROFILE IF NOT EXISTS cxledger_writer SETTINGS max_memory_usage = 8000000000 MAX 16000000000, max_execution_time = 600, readonly = 0 CONST;
CREATE SETTINGS PROFILE IF NOT EXISTS grafana_readonly SETTINGS readonly = 1, max_execution_time = 60 MIN 1 MAX 300 CHANGEABLE_IN_READONLY, max_memory_usage = 4000000000 MAX 4000000000, max_result_rows = 1000000, result_overflow_mode = 'throw', max_threads = 4;
CREATE SETTINGS PROFILE IF NOT EXISTS ops_readonly SETTINGS readonly = 2 CONST, max_execution_time = 300 MIN 1 MAX 3600, max_memory_usage = 8000000000 MAX 8000000000;

-- the schema owner: `cxledger db migrate` (once per release), nothing else
CREATE USER IF NOT EXISTS cxledger_migrator IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_MIGRATOR_PASSWORD}';
GRANT SELECT, INSERT, ALTER, CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, TRUNCATE, OPTIMIZE ON cx.* TO cxledger_migrator;

-- the sinks: rows in, the restore's repair (lightweight DELETE needs ALTER DELETE), replay's
-- scratch database; no DDL on cx, no access management
CREATE USER IF NOT EXISTS cxledger_writer IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_WRITER_PASSWORD}' SETTINGS PROFILE 'cxledger_writer';
GRANT SELECT, INSERT, ALTER DELETE ON cx.* TO cxledger_writer;
GRANT SELECT, INSERT, ALTER DELETE, CREATE DATABASE, DROP DATABASE, CREATE TABLE, DROP TABLE, TRUNCATE ON cx_replay.* TO cxledger_writer;

-- Grafana's data source
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_GRAFANA_PASSWORD}' SETTINGS PROFILE 'grafana_readonly';
GRANT SELECT ON cx.* TO grafana;

-- people
CREATE USER IF NOT EXISTS ops IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_OPS_PASSWORD}' SETTINGS PROFILE 'ops_readonly';
GRANT SELECT ON cx.* TO ops;
