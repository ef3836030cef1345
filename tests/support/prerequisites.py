"""What a test does when a real peer it needs (Postfix, Dovecot, PostgreSQL, openssl) is missing.

On a developer's machine the test skips, saying why: not everyone has the servers installed.
Under CI (`CI=true`) the same test fails with the same reason instead, because CI installs every
peer (`.ci/install-system-packages`, `.ci/start-postgres`): a skip there means an install step
broke, and a suite whose real-server tests all skip would otherwise stay green.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Values of $CI that mean "this is a CI run" (CI systems set CI=true; some set 1).
_TRUE = {"1", "true", "yes", "on"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in _TRUE


def unavailable(reason: str) -> NoReturn:
    """Skip the current test because of `reason`, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing peer is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)
