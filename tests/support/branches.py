"""Which branch each example of a property test took, so the test can demand the branch it is about.

A property test that returns early on a refusal ("refused: nothing more to check") passes just
as well for a bug that refuses every input, and one that checks a delivered file passes when
nothing is ever delivered. Counting the branches lets the test assert, after all its examples,
that the accepting branch ran for a known share of them. Use it around an inner @given function:

    branches = Branches()

    @given(...)
    def example(...) -> None:
        ...
        branches.took("refused")
        ...

    example()
    branches.assert_share("accepted", at_least=0.25)
"""

from __future__ import annotations

from collections import Counter

from hypothesis import event


class Branches:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def took(self, branch: str) -> None:
        self.counts[branch] += 1
        event(branch)  # also in --hypothesis-show-statistics

    def share(self, branch: str) -> float:
        total = self.counts.total()
        return self.counts[branch] / total if total else 0.0

    def assert_share(self, branch: str, at_least: float) -> None:
        total = self.counts.total()
        assert total > 0, "no example ran"
        assert self.share(branch) >= at_least, (
            f"{branch!r} ran for {self.counts[branch]} of {total} examples, "
            f"fewer than {at_least:.0%}: {dict(self.counts)}"
        )
