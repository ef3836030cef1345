"""Editing a profile through the command line keeps what a person wrote in profile.toml: comments,
the order of keys and tables, and the layout of what did not change."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.cli import run
from postroom.profile import Profile

HAND_WRITTEN = {
    "top": "# The machine's mail: ask Dana before changing this.",
    "mode": "  # online all the time: the relay is on the LAN",
    "service": "# local mail for this box only",
    "domains": "  # and nothing else",
}


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    directory = tmp_path / "profile"
    assert run(["init", str(directory)]) == 0
    path = directory / "profile.toml"
    text = path.read_text()
    text = HAND_WRITTEN["top"] + "\n" + text
    text = text.replace('mode = "online"', 'mode = "online"' + HAND_WRITTEN["mode"])
    text = text.replace("[[service]]", HAND_WRITTEN["service"] + "\n[[service]]", 1)
    text = text.replace('domains = ["localhost"]', 'domains = ["localhost"]' + HAND_WRITTEN["domains"])
    path.write_text(text)
    return directory


def comments_kept(directory: Path) -> str:
    text = (directory / "profile.toml").read_text()
    for comment in HAND_WRITTEN.values():
        assert comment.strip() in text, f"lost {comment.strip()!r}:\n{text}"
    return text


def test_a_comment_survives_adding_a_service_and_setting_the_transport_order(profile: Path) -> None:
    fax = ["service", "add", "pipe", "fax", "--set", 'command=["true"]', "--set", 'address_types=["FAX"]']
    assert run(["--profile", str(profile), *fax]) == 0
    assert run(["--profile", str(profile), "order", "set", "fax", "local"]) == 0
    text = comments_kept(profile)
    assert text.startswith(HAND_WRITTEN["top"] + "\n[profile]\n")
    assert text.index("transport_order") < text.index(HAND_WRITTEN["service"])  # in [profile], above the comment
    assert [s.name for s in Profile.load(profile).transport_order()] == ["fax", "local"]


def test_a_comment_survives_changing_a_service_and_going_offline(profile: Path) -> None:
    assert run(["--profile", str(profile), "service", "set", "local", "--set", 'domains=["localhost", "box"]']) == 0
    assert run(["--profile", str(profile), "offline"]) == 0
    text = comments_kept(profile)
    assert 'domains = ["localhost", "box"]' + HAND_WRITTEN["domains"] in text
    loaded = Profile.load(profile)
    assert loaded.service("local").options["domains"] == ["localhost", "box"] and loaded.mode == "offline"


def test_removing_a_service_keeps_the_comments_of_the_others(profile: Path) -> None:
    fax = ["service", "add", "pipe", "fax", "--set", 'command=["true"]', "--set", 'address_types=["FAX"]']
    assert run(["--profile", str(profile), *fax]) == 0
    assert run(["--profile", str(profile), "service", "remove", "fax"]) == 0
    comments_kept(profile)
    assert [s.name for s in Profile.load(profile).services] == ["local"]


def test_a_file_that_is_no_toml_any_more_is_written_anew(tmp_path: Path) -> None:
    profile = Profile.create(tmp_path / "p")
    profile.path.write_text("this is [not toml\n")
    profile.save()
    assert [s.name for s in Profile.load(profile.directory).services] == ["local"]
