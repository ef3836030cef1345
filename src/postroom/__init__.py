"""postroom: the MAPI messaging subsystem in Python.

`postroom.logon(profile)` opens a profile's message store and logs on to its transports.
"""

__version__ = "0.1.0"
