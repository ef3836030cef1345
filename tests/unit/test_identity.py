"""Who mail is from: the profile's identity, `Draft.set_sender`, the Message-ID's domain and the
fallback identity (issue 16, item 5), through the face and the default `maildir` transport."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

import postroom
from postroom import Identity, IdentitySource, MAPIError, Profile
from postroom.identity import check_address, check_name, fallback_identity, login_name, message_id_domain
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult


@pytest.fixture
def session(tmp_path: Path) -> postroom.Session:
    s = postroom.logon(Profile.create(tmp_path / "profile"))
    yield s
    s.close()


def delivered(session: postroom.Session, who: str = "bob") -> EmailMessage:
    """The one message the `local` maildir transport delivered to who@localhost."""
    [path] = (session.profile.directory / "maildir" / "localhost" / who / "new").iterdir()
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def send(session: postroom.Session, sender: str | None = None) -> int:
    draft = session.create_message("Hello", "Hi Bob").to("bob@localhost")
    if sender is not None:
        draft.set_sender(sender)
    mid = draft.submit()
    session.deliver()
    return mid


def test_mail_is_from_the_identity_set_in_the_profile_and_its_message_id_is_in_that_domain(
    session: postroom.Session,
) -> None:
    who = session.set_identity("Alice Example", "alice@example.org")
    assert who == Identity("Alice Example", "alice@example.org", IdentitySource.PROFILE)
    send(session)
    message = delivered(session)
    assert message["From"] == "Alice Example <alice@example.org>"
    assert message["Sender"] is None
    assert message["Message-ID"].endswith("@example.org>")


def test_the_identity_is_kept_in_the_profile_file_and_read_by_the_next_session(
    session: postroom.Session, tmp_path: Path
) -> None:
    session.set_identity("Alice", "alice@example.org")
    session.close()
    settings = Profile.load(tmp_path / "profile").settings
    assert (settings["sender_name"], settings["sender_address"]) == ("Alice", "alice@example.org")
    with postroom.logon(tmp_path / "profile") as again:
        assert again.identity() == Identity("Alice", "alice@example.org", IdentitySource.PROFILE)
        assert again.clear_identity().source == IdentitySource.FALLBACK
    assert "sender_address" not in Profile.load(tmp_path / "profile").settings


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("Eve", "eve@example.org\r\nBcc: victim@example.org"),
        ("Eve\r\nBcc: victim@example.org", "eve@example.org"),
        ("Eve\x0b", "eve@example.org"),
        ("Eve", "Eve <eve@example.org>"),
        ("Eve", "not an address"),
        ("Eve", "eve@"),
        ("Eve", "eve@=?utf-8?q?x?="),
        ("Eve", ""),
    ],
)
def test_a_bad_identity_is_refused_with_invalid_parameter_and_nothing_changes(
    session: postroom.Session, name: str, address: str
) -> None:
    with pytest.raises(MAPIError) as caught:
        session.set_identity(name, address)
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert session.identity().source == IdentitySource.FALLBACK
    assert "sender_address" not in Profile.load(session.profile.directory).settings


def test_a_hand_edited_identity_that_is_not_an_address_stops_submission_with_corrupt_data(
    session: postroom.Session,
) -> None:
    session.profile.settings["sender_address"] = "alice@example.org\nBcc: x@example.org"
    with pytest.raises(MAPIError) as caught:
        session.create_message("x", "y").to("bob@localhost").submit()
    assert caught.value.code == HResult.MAPI_E_CORRUPT_DATA
    assert "sender_address" in caught.value.message and "postroom identity set" in caught.value.message


def test_each_message_is_stamped_with_the_identity_of_the_moment_it_is_submitted(
    session: postroom.Session,
) -> None:
    # The session keeps the identity it last checked: a change, by set_identity, by hand or back to
    # the fallback, must still reach the next message.
    def submitted_from() -> str:
        mid = session.create_message("x", "y").to("bob@localhost").submit()
        props = session.engine.store.open_message(mid).props
        return f"{props[T.PR_SENDER_NAME]} <{props[T.PR_SENDER_EMAIL_ADDRESS]}>"

    session.set_identity("Alice", "alice@example.org")
    assert submitted_from() == "Alice <alice@example.org>"
    session.profile.settings["sender_address"] = "alice@example.net"
    assert submitted_from() == "Alice <alice@example.net>"
    session.set_identity("Alice Two", "alice@example.net")
    assert submitted_from() == "Alice Two <alice@example.net>"
    session.profile.settings["sender_name"] = "Alice\nBcc: x@example.org"
    with pytest.raises(MAPIError) as caught:
        submitted_from()
    assert caught.value.code == HResult.MAPI_E_CORRUPT_DATA
    session.clear_identity()
    fallback = fallback_identity()
    assert submitted_from() == f"{fallback.name} <{fallback.address}>"


def test_a_sender_set_on_the_message_comes_before_the_profile_identity(session: postroom.Session) -> None:
    session.set_identity("Alice", "alice@example.org")
    mid = send(session, "Carol Chief <carol@example.net>")
    message = delivered(session)
    assert message["From"] == "Carol Chief <carol@example.net>"
    assert message["Sender"] is None
    assert message["Message-ID"].endswith("@example.net>")
    props = session.engine.store.open_message(mid).props
    assert props[T.PR_SENT_REPRESENTING_EMAIL_ADDRESS] == props[T.PR_SENDER_EMAIL_ADDRESS] == "carol@example.net"


def test_without_a_sender_of_its_own_a_message_is_stamped_with_the_sender_but_not_sent_representing(
    session: postroom.Session,
) -> None:
    # The absence of PR_SENT_REPRESENTING_* is what lets an account's from_address stand in.
    mid = session.create_message("x", "y").to("bob@localhost").submit()
    props = session.engine.store.open_message(mid).props
    assert props[T.PR_SENDER_EMAIL_ADDRESS] == session.identity().address
    assert T.PR_SENT_REPRESENTING_EMAIL_ADDRESS not in props


@pytest.mark.parametrize("sender", ["FAX:+15551234", "a@b\r\nBcc: x@y", "Name <a@b", "x"])
def test_a_sender_that_is_not_an_smtp_address_is_refused(session: postroom.Session, sender: str) -> None:
    draft = session.create_message("x", "y").to("bob@localhost")
    with pytest.raises(MAPIError) as caught:
        draft.set_sender(sender)
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER


def test_the_fallback_identity_is_the_login_name_at_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "carol")
    assert fallback_identity() == Identity("carol", "carol@localhost", IdentitySource.FALLBACK)
    # A $LOGNAME that is no local part is passed over for $USER.
    monkeypatch.setenv("LOGNAME", "carol smith")
    monkeypatch.setenv("USER", "csmith")
    assert login_name() == "csmith"


def test_the_checks_say_what_is_wrong() -> None:
    assert check_address(" SMTP:alice@example.org ") == "alice@example.org"
    assert check_name("  Alice Müller ") == "Alice Müller"
    with pytest.raises(MAPIError, match="without a display name"):
        check_address("Alice <alice@example.org>")
    with pytest.raises(MAPIError, match="control character"):
        check_name("Alice\u2028Bcc: x@y")


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"from_address": "alice@work.example\r\nBcc: x@y"}, "option 'from_address'"),
        ({"from_address": "Alice <alice@work.example>"}, "option 'from_address'"),
        ({"from_address": ["alice@work.example"]}, "option 'from_address' must be an e-mail address"),
        ({"from_name": "Alice"}, "option 'from_name' needs 'from_address'"),
        ({"from_address": "alice@work.example", "from_name": "A\nBcc: x@y"}, "option 'from_name'"),
    ],
)
def test_a_bad_account_identity_is_refused_when_the_service_is_added(
    session: postroom.Session, options: dict[str, object], why: str
) -> None:
    with pytest.raises(MAPIError) as caught:
        session.add_service("smtp", "work", {"host": "127.0.0.1", **options})
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER and why in caught.value.message
    assert [s.name for s in session.services()] == ["local"]


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("alice@example.org", "example.org"),
        ("alice@[192.0.2.1]", "localhost"),
        ("/o=Org/cn=boss", "localhost"),
        ("alice@exämple.org", "xn--exmple-cua.org"),  # IDNA: a Message-ID is ASCII
        ("alice@ex\u00e4mple..org", "localhost"),
    ],
)
def test_a_message_id_is_made_in_the_from_domain_when_it_is_a_host_name(address: str, domain: str) -> None:
    assert message_id_domain(address) == domain
