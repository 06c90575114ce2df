"""ClickHouse writer and the sink process."""
