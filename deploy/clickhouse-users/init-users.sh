#!/bin/bash
# Runs once when the ClickHouse volume is new: a least-privilege user for Ripple (DDL and
# inserts on database ripple only) and a read-only user for Grafana.
set -euo pipefail
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS ripple;
CREATE USER IF NOT EXISTS ripple IDENTIFIED WITH sha256_password BY '${RIPPLE_CLICKHOUSE_PASSWORD}';
GRANT SELECT, INSERT, CREATE TABLE, CREATE VIEW, ALTER, OPTIMIZE ON ripple.* TO ripple;
GRANT CREATE DATABASE ON ripple.* TO ripple;
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY '${GRAFANA_CLICKHOUSE_PASSWORD}'
    SETTINGS readonly = 1;
GRANT SELECT ON ripple.* TO grafana;
SQL
