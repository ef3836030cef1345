"""Closed sets of words that are also written down: history event kinds in the store, kinds of
notification between processes.

A word is written by one postroom and may be read by another, older or newer. What this one does
not know is read back as the text it is, never refused: an unknown history line still shows, and
an unknown notification still wakes a spooler.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self


class StoredWords(StrEnum):
    """A StrEnum whose words are read back from storage or from another process."""

    @classmethod
    def read(cls, text: str) -> Self | str:
        """The member for `text`; a word this postroom does not know stays as it is."""
        try:
            return cls(text)
        except ValueError:
            return text
