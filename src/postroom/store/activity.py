"""The history words the status page and /metrics count (their value types, QueuePage,
QueueCounts, ActivityBucket and DeliveryStats, are in base.py with the store's other ones).

The history (the events table) is the one record every spooler process writes, on SQLite and on a
shared PostgreSQL store alike, and it is never rewritten: counters and charts read from it count
each delivery once, however many processes made them, and survive restarts. Schema 5 indexes it
by time (migrations.py).
"""

from __future__ import annotations

#: The history words that are a recipient's outcome.
OUTCOME_KINDS = ("delivered", "failed", "expired")
#: The history words that are a temporary failure (the message waits for a retry).
RETRY_KINDS = ("wait", "transport-error")
#: The history words after which a message is no longer queued.
LEFT_KINDS = ("finished", "aborted")
