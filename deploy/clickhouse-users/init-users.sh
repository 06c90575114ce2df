#!/bin/bash
# Runs once, when the ClickHouse volume is new (docker-entrypoint-initdb.d), as the admin user:
#  * `ripple`: least privilege for the migrations and the sink — read, insert, create tables and
#    views, add columns, on database `ripple` only; no DROP, TRUNCATE, ALTER DELETE/UPDATE, and
#    nothing on other databases. A future migration needing more fails with a clear grant error.
#  * `grafana`: read-only (SELECT on `ripple` only). readonly = 2 rather than 1, because the
#    Grafana ClickHouse data source sets max_execution_time on every query, which readonly = 1
#    refuses; readonly = 2 still forbids every write and DDL, and `readonly` itself cannot change.
# Passwords come from .env through docker-compose.yml; changing them later needs
#   ALTER USER ripple IDENTIFIED WITH sha256_password BY '...'   (as admin), or a new volume.
set -euo pipefail
: "${CLICKHOUSE_USER:?}" "${CLICKHOUSE_PASSWORD:?}"
: "${RIPPLE_CLICKHOUSE_PASSWORD:?set it in .env}" "${GRAFANA_CLICKHOUSE_PASSWORD:?set it in .env}"

# a ClickHouse string literal: backslashes and single quotes escaped
sql_quote() {
    local s=${1//\\/\\\\}
    s=${s//\'/\\\'}
    printf "'%s'" "$s"
}
ripple_password=$(sql_quote "$RIPPLE_CLICKHOUSE_PASSWORD")
grafana_password=$(sql_quote "$GRAFANA_CLICKHOUSE_PASSWORD")

clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS ripple;

CREATE USER IF NOT EXISTS ripple IDENTIFIED WITH sha256_password BY ${ripple_password};
GRANT SELECT, INSERT, CREATE TABLE, CREATE VIEW, ALTER ADD COLUMN, ALTER COMMENT COLUMN ON ripple.* TO ripple;
GRANT CREATE DATABASE ON ripple.* TO ripple;

CREATE SETTINGS PROFILE IF NOT EXISTS grafana_readonly
    SETTINGS readonly = 2, max_execution_time = 60 MAX 300;
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY ${grafana_password}
    SETTINGS PROFILE 'grafana_readonly';
GRANT SELECT ON ripple.* TO grafana;
SQL
