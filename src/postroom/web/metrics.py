"""`/metrics`: the Prometheus exposition of what the store says, computed at each scrape.

Every number is read from the store (the queue, the messages' history, the breaker state every
process shares, each spooler process's row of pass totals, the connection slots' locks), never
counted in this process: on a shared PostgreSQL store each delivery is
counted once however many spooler processes made it, and the counters survive restarts. Only
`postroom_store_errors_total` is this server's own (the reads of the store that failed).
No label carries a secret: transports by name, states and outcomes by their MAPI words.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from postroom import DeliveryStats, QueueCounts, Service, SpoolerStats, StatusRow
from postroom.mapi.flags import StatusCode

#: Delivery latency buckets (seconds from submission to a recipient's outcome).
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)


@dataclass(frozen=True)
class Snapshot:
    """What one scrape read from the session."""

    counts: QueueCounts
    stats: DeliveryStats
    breakers: dict[str, dict[str, object]]
    spooler: SpoolerStats
    rows: Sequence[StatusRow]
    transports: Sequence[Service]
    online: bool
    daemon_running: bool
    now: datetime
    store_errors: int


def _name(transport: str) -> str:
    return transport.lower() or "none"


class SnapshotCollector(Collector):
    """Turns one Snapshot into metric families (a new collector per scrape)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        depth = GaugeMetricFamily(
            "postroom_queue_messages",
            "Queued messages by queue state and the transport they wait for.",
            labels=["state", "transport"],
        )
        for (state, transport), n in sorted(s.counts.by_state_transport.items()):
            depth.add_metric([state, _name(transport)], n)
        yield depth
        by_state = GaugeMetricFamily("postroom_queue_depth", "Queued messages by queue state.", labels=["state"])
        for state in ("queued", "held"):
            by_state.add_metric([state], s.counts.by_state.get(state, 0))
        yield by_state
        oldest = s.counts.oldest_submit
        age = 0.0 if oldest is None else max(0.0, (s.now - oldest).total_seconds())
        yield GaugeMetricFamily(
            "postroom_queue_oldest_age_seconds", "Age of the oldest queued message (0: the queue is empty).", value=age
        )
        outcomes = CounterMetricFamily(
            "postroom_recipients",
            "Recipient outcomes by transport and outcome (delivered, failed, expired).",
            labels=["transport", "outcome"],
        )
        for (transport, outcome), n in sorted(s.stats.outcomes.items()):
            outcomes.add_metric([_name(transport), outcome], n)
        yield outcomes
        retries = CounterMetricFamily(
            "postroom_retries", "Temporary failures by transport (each one a retry to come).", labels=["transport"]
        )
        for transport, n in sorted(s.stats.retries.items()):
            retries.add_metric([_name(transport)], n)
        yield retries
        yield CounterMetricFamily(
            "postroom_operator_retries", "Messages an operator made due now (retry).", value=s.stats.operator_retries
        )
        yield CounterMetricFamily("postroom_inbound_messages", "Messages received.", value=s.stats.inbound)
        yield from self._latency()
        breaker = GaugeMetricFamily(
            "postroom_breaker_open", "1 while a transport's circuit breaker is open.", labels=["transport"]
        )
        for service in s.transports:
            opened = s.breakers.get(service.name, {}).get("open_until")
            breaker.add_metric([_name(service.name)], 1.0 if opened is not None else 0.0)
        yield breaker
        failing = GaugeMetricFamily(
            "postroom_transport_failure", "1 while a transport's status row has STATUS_FAILURE.", labels=["transport"]
        )
        for row in s.rows:
            if row.resource_type == 35 or row.display_name in {t.name for t in s.transports}:
                failing.add_metric([_name(row.display_name)], 1.0 if row.status_code & StatusCode.FAILURE else 0.0)
        yield failing
        yield from self._spooler()
        yield GaugeMetricFamily("postroom_online", "1 online, 0 offline.", value=1.0 if s.online else 0.0)
        yield GaugeMetricFamily(
            "postroom_daemon_running", "1 while a spooler daemon runs on the profile.", value=float(s.daemon_running)
        )
        yield CounterMetricFamily(
            "postroom_store_errors", "Reads of the store by this server that failed.", value=s.store_errors
        )

    def _spooler(self) -> Iterator[Metric]:
        """What the spooler processes wrote about their passes (summed over them) and the slots held now."""
        sp = self.snap.spooler
        waits = CounterMetricFamily(
            "postroom_throttle_waits",
            "Times a transport's throttle made a message's recipients wait, by transport.",
            labels=["transport"],
        )
        for transport, n in sorted(sp.throttle_waits.items()):
            waits.add_metric([_name(transport)], n)
        yield waits
        slots = GaugeMetricFamily(
            "postroom_connection_slots_in_use",
            "Connection slots held now by every process on the store, by transport.",
            labels=["transport"],
        )
        for transport, n in sorted(sp.slots_in_use.items()):
            slots.add_metric([_name(transport)], n)
        yield slots
        passes = HistogramMetricFamily(
            "postroom_spooler_pass_duration_seconds",
            "Seconds each spooler pass over the queue took, over every spooler process.",
        )
        buckets = [(str(b), float(n)) for b, n in zip(sp.pass_bounds, sp.pass_buckets, strict=True)]
        buckets.append(("+Inf", float(sp.passes)))
        passes.add_metric([], buckets, sum_value=sp.pass_seconds)
        yield passes
        yield GaugeMetricFamily(
            "postroom_spooler_processes",
            "Spooler processes that have reported a pass on this store since it was made.",
            value=sp.processes,
        )

    def _latency(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "postroom_delivery_latency_seconds",
            "Seconds from submission to each recipient's outcome, by transport.",
            labels=["transport"],
        )
        stats = self.snap.stats
        for transport in sorted(stats.latency_count):
            below = stats.latency_buckets.get(transport, [])
            buckets = [(str(b), float(n)) for b, n in zip(stats.latency_bounds, below, strict=True)]
            buckets.append(("+Inf", float(stats.latency_count[transport])))
            hist.add_metric([_name(transport)], buckets, sum_value=stats.latency_sum.get(transport, 0.0))
        yield hist
