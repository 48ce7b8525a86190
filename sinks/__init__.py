"""Sinks: the ClickHouse tables, the ledger and derived sinks, views and replay."""
