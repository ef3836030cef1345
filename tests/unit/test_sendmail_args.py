"""The command line of postroom-sendmail, read as sendmail reads what its callers pass."""

from __future__ import annotations

import pytest

from postroom.cli.sendmail_args import Mode, UsageProblem, message_from_stdin, parse


def test_recipients_are_the_words_that_are_no_flags() -> None:
    inv = parse(["alice@example.org", "bob@example.org"])
    assert inv.recipients == ["alice@example.org", "bob@example.org"] and inv.mode is Mode.DELIVER


def test_dash_t_dash_i_and_dash_v_are_flags_of_their_own() -> None:
    inv = parse(["-t", "-i", "-v"])
    assert inv.extract and inv.ignore_dots and inv.verbose


def test_the_envelope_sender_is_read_from_the_same_word_or_the_next() -> None:
    assert parse(["-fbounce@example.org", "a@b.c"]).sender == "bounce@example.org"
    assert parse(["-f", "bounce@example.org", "a@b.c"]).sender == "bounce@example.org"
    assert parse(["-r", "r@example.org"]).sender == "r@example.org"
    assert parse(["-F", "Cron Daemon"]).full_name == "Cron Daemon"


def test_dash_oi_is_dash_i_and_other_sendmail_options_are_accepted_and_ignored() -> None:
    inv = parse(["-oi", "-odi", "-oem", "-oee", "-B8BITMIME", "-B", "7BIT", "-em", "-L", "cron", "a@b.c"])
    assert inv.ignore_dots and inv.recipients == ["a@b.c"]


def test_dash_n_dash_r_and_dash_v_are_the_dsn_requests() -> None:
    inv = parse(["-N", "success,failure", "-Rhdrs", "-V", "run-42", "a@b.c"])
    assert (inv.notify, inv.ret, inv.envid, inv.recipients) == ("success,failure", "HDRS", "run-42", ["a@b.c"])
    assert parse(["-Nnever", "a@b.c"]).notify == "never"


@pytest.mark.parametrize(
    "argv",
    [["-N", "sometimes"], ["-N", "never,success"], ["-N", "delay,delay"], ["-R", "body"], ["-V", "has space"]],
    ids=lambda a: " ".join(a),
)
def test_a_malformed_dsn_request_is_a_usage_problem(argv: list[str]) -> None:
    with pytest.raises(UsageProblem):
        parse([*argv, "a@b.c"])


def test_everything_after_a_double_dash_is_a_recipient() -> None:
    assert parse(["--", "-odd@example.org"]).recipients == ["-odd@example.org"]


def test_invoked_as_mailq_or_with_dash_bp_it_lists_the_queue() -> None:
    assert parse([], "mailq").mode is Mode.QUEUE
    assert parse(["-bp"]).mode is Mode.QUEUE
    assert parse(["-bs"]).mode is Mode.SMTP


@pytest.mark.parametrize(
    "argv", [["-X"], ["--help"], ["-bd"], ["-f"], ["-tx"], ["-o"], ["-Z", "a@b.c"]], ids=lambda a: " ".join(a)
)
def test_an_unknown_or_incomplete_flag_is_a_usage_problem(argv: list[str]) -> None:
    with pytest.raises(UsageProblem):
        parse(argv)


def test_without_dash_i_a_line_with_a_single_dot_ends_the_message() -> None:
    assert message_from_stdin(b"Subject: x\n\nabc\n.\nnot this\n", ignore_dots=False) == b"Subject: x\n\nabc\n"
    assert (
        message_from_stdin(b"Subject: x\r\n\r\nabc\r\n.\r\nno\r\n", ignore_dots=False) == b"Subject: x\r\n\r\nabc\r\n"
    )
    assert message_from_stdin(b"Subject: x\n\nabc\n.", ignore_dots=False) == b"Subject: x\n\nabc\n"


def test_with_dash_i_a_single_dot_is_part_of_the_message() -> None:
    data = b"Subject: x\n\nabc\n.\nstill here\n"
    assert message_from_stdin(data, ignore_dots=True) == data


def test_a_dot_that_is_not_alone_on_its_line_never_ends_the_message() -> None:
    data = b"Subject: x\n\n.hidden\n..\n"
    assert message_from_stdin(data, ignore_dots=False) == data
