"""The engine: what runs under the face (`postroom.logon` → `Session`).

* runtime.py: one logon's profile, message store, transport table, spooler, clock and mode;
* protocol.py: the protocol manager, the only writer of the mode: when transports are logged
  on, called, flushed and polled; Send/Receive; inbound mail;
* groups.py: Send/Receive groups and their rules ("All Accounts" always exists);
* daemon.py: the spooler daemon's loop, which rides out store outages; pidfile.py: its pid file;
* report.py: what became of each recipient; status.py: which status table to trust;
* results.py: the values Send/Receive, receive and the routing dry run hand back;
* engine.py: the Engine, which puts them together for the face.
"""

from .engine import Engine

__all__ = ["Engine"]
