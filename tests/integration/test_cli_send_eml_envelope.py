"""`postroom send --eml` takes its envelope from the file's headers (issue 16, item 4): To/Cc/Bcc,
or Resent-To/Cc/Bcc when there are any (as `sendmail -t` does), never a report's Final-Recipient.

Through the command, into the default profile's maildir transport for `localhost`.
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

from support.cli import postroom

pytestmark = pytest.mark.integration

BOUNCE = (Path(__file__).parents[1] / "data" / "bounces" / "exchange-online-5.1.10.eml").read_bytes()


def delivered(profile: Path, user: str) -> list[email.message.Message]:
    new = profile / "maildir" / "localhost" / user / "new"
    files = sorted(new.iterdir()) if new.is_dir() else []
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]


def test_a_bounce_sent_on_goes_to_its_own_to_and_cc_not_to_the_bounced_address(profile: Path, tmp_path: Path) -> None:
    # The bounce, forwarded to a help desk: its own headers now name alice and bob.
    eml = tmp_path / "bounce.eml"
    eml.write_bytes(
        BOUNCE.replace(b"To: <alice@example.org>", b"To: alice@localhost\nCc: Bob <bob@localhost>").replace(
            b"carol@contoso.com", b"carol@localhost"
        )
    )
    sent = postroom("send", "--eml", eml, "--json", profile=profile)
    assert sent.returncode == 0, sent.stderr
    addresses = [r["address"] for r in json.loads(sent.stdout)["recipients"]]
    assert addresses == ["SMTP:alice@localhost", "SMTP:bob@localhost"]
    assert len(delivered(profile, "alice")) == len(delivered(profile, "bob")) == 1
    assert delivered(profile, "carol") == []  # the Final-Recipient is what the report is about


def test_resent_to_is_the_envelope_and_to_stays_a_header(profile: Path, tmp_path: Path) -> None:
    eml = tmp_path / "resent.eml"
    eml.write_bytes(
        b"Resent-From: alice@localhost\r\nResent-To: Carol <carol@localhost>\r\n"
        b"From: bob@example.org\r\nTo: alice@localhost\r\nSubject: Minutes\r\n\r\nAs discussed.\r\n"
    )
    sent = postroom("send", "--eml", eml, "--json", profile=profile)
    assert sent.returncode == 0, sent.stderr
    (carols,) = delivered(profile, "carol")
    assert delivered(profile, "alice") == []  # To: was delivered before; a resend does not repeat it
    assert carols["To"] == "alice@localhost"  # and it is still the message's To
    assert "carol" not in str(carols.get("To", "")) + str(carols.get("Cc", ""))
    # The command says what became of alice's row, and that it was not sent.
    again = postroom("send", "--eml", eml, profile=profile)
    assert "SMTP:alice@localhost  earlier (a resend: shown in the headers, not sent again)" in again.stdout
