"""The spooler: routing (a pure function), the outbound algorithm, reports."""

from .outbound import MessageResult, OutboundProcessor
from .routing import Offer, Router, route
from .spooler import PassSummary, Spooler
from .transports import LoadedTransport, TransportTable

__all__ = [
    "LoadedTransport",
    "MessageResult",
    "Offer",
    "OutboundProcessor",
    "PassSummary",
    "Router",
    "Spooler",
    "TransportTable",
    "route",
]
