"""postroom: the MAPI messaging subsystem in Python.

`postroom.logon(profile)` opens a profile's message store and returns a `Session`;
`postroom.alogon(profile)` returns the asyncio flavour.
"""

from .mapi.codes import HResult, MAPIError
from .session import AsyncSession, Draft, RouteAnswer, Session, alogon, logon

__version__ = "0.1.0"

__all__ = ["AsyncSession", "Draft", "HResult", "MAPIError", "RouteAnswer", "Session", "__version__", "alogon", "logon"]
