"""How many SQL statements and commits a store object has run: the cost the spooler pays per message.

The figure that matters for throughput is not a time (that depends on the machine and on who
else runs on it) but how many times the spooler asks the database for something, and how many
of those are durable commits (each an fsync). The benchmarks read both per delivered message
(benchmarks/statement_count.py), and tests pin them, so a change that adds a statement to the
delivery path shows up as a number, not as a vague slowdown.

Commits are always counted (one integer per transaction). Statements are counted once
`counting` is switched on (`MessageStore.count_statements()`): on SQLite that installs a trace
callback, which costs a Python call per statement, so it stays off unless asked for. A
statement is anything the database executes, BEGIN, COMMIT and SAVEPOINT included; one row of
an executemany is one statement (SQLite steps it again; PostgreSQL without a pipeline pays a
round trip for it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StatementCount:
    """Running totals for one store object (not shared between processes)."""

    statements: int = 0
    commits: int = 0
    counting: bool = False

    def snapshot(self) -> tuple[int, int]:
        """(statements, commits) now, to subtract from a later snapshot."""
        return self.statements, self.commits
