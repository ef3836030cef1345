"""Profiles made of recording transports, for spooler tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from postroom.profile import Profile

from . import recording  # noqa: F401  (registers the "recording" kind)


def make_profile(directory: Path, *services: tuple[str, dict[str, Any]], kind: str = "recording") -> Profile:
    profile = Profile.create(directory, with_defaults=False)
    for name, options in services:
        profile.add_service(kind, name, options)
    profile.save()
    return profile
