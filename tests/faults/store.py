"""A ClickHouse client that fails the way a store does: the real client, wrapped.

``FaultyStore(client, refuse=N)`` makes the next N inserts raise a timeout, as a server that is
restarting or overloaded would; ``poison`` makes every insert into ``poison_table`` holding a
row with one of those values raise ClickHouse's INCORRECT_DATA, as a value the table cannot
hold would. Everything else goes to the real client.
"""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError


class FaultyStore:
    def __init__(self, client, refuse: int = 0, poison: set[str] | None = None,
                 poison_table: str = "ledger_events"):
        self._client = client
        self.refuse = refuse
        self.poison = poison or set()
        self.poison_table = poison_table
        self.inserts = 0
        self.refused = 0

    def insert(self, table: str, rows: list[list[Any]], *args, **kwargs):
        self.inserts += 1
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            raise OperationalError("Code: 159. DB::Exception: Timeout exceeded: elapsed 30.0 s "
                                   "(injected). (TIMEOUT_EXCEEDED)", code=159,
                                   name="TIMEOUT_EXCEEDED")
        if table == self.poison_table and any(
                value in self.poison for row in rows for value in row if isinstance(value, str)):
            raise DatabaseError("Code: 117. DB::Exception: Cannot store value (injected). "
                                "(INCORRECT_DATA)", code=117, name="INCORRECT_DATA")
        return self._client.insert(table, rows, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)
