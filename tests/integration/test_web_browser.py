"""The status page in a real headless Chromium: what an operator sees and does there.

One browser for the module (starting one costs more than a test). Each test serves its own
profile with `postroom serve http` (or the spooler daemon with --http) on loopback, and writes a
screenshot of what it saw into the run's tmp directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.profile import Profile

from support.smtp_sink import free_port
from support.web import chromium, make_profile, new_token, served

pytestmark = pytest.mark.integration

XSS = ["<script>window.__pwned = 1</script>", '"><img src=x onerror="window.__pwned = 2">']


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def wait_for(what: Callable[[], Any], seconds: float = 20.0, why: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {why or what}")
        time.sleep(0.1)


def text_of(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    try:
        return str(browser.find_element(By.CSS_SELECTOR, css).text)
    except Exception:  # replaced by a live update between finding and reading: read again
        return ""


def log_in(browser: Any, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    browser.find_element(By.CSS_SELECTOR, "#login input[name=token]").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'meta[name="postroom-csrf"]'), why="the operator's page")


def live(browser: Any) -> None:
    """Wait until the page's event stream is open (its updates start from there)."""
    wait_for(lambda: browser.execute_script("return document.body.dataset.live === '1'"), why="the event stream")


def test_the_overview_shows_the_status_rows_mode_and_queue(browser: Any, shots: Path, tmp_path: Path) -> None:
    profile = make_profile(tmp_path / "p")
    with postroom.logon(Profile.load(profile)) as session:
        session.hold(session.create_message("waiting", "b").to("someone@localhost").submit())
    with served(profile) as url:
        browser.get(url + "/")
        assert "Overview" in browser.title
        assert text_of(browser, "#mode") == "online"
        rows = text_of(browser, "#status-rows")
        assert "MAPI subsystem" in rows and "MAPI spooler" in rows and "local" in rows
        assert text_of(browser, '#queue-counts td[data-state="held"]') == "1"
        assert "read-only" in text_of(browser, "header")
        browser.save_screenshot(str(shots / "overview.png"))


def test_a_transport_shows_failure_after_its_smtp_server_is_stopped(browser: Any, shots: Path, tmp_path: Path) -> None:
    profile = make_profile(tmp_path / "p")
    with postroom.logon(Profile.load(profile)) as session:
        # Nothing listens there any more: the server was stopped.
        options = {"host": "127.0.0.1", "port": free_port(), "security": "none", "domains": ["sink.test"]}
        session.add_service("smtp", "mta", options)
    with served(profile, spooler=True) as url:
        browser.get(url + "/")
        live(browser)
        assert "running" in text_of(browser, "#daemon")
        with postroom.logon(Profile.load(profile)) as session:
            session.create_message("to a stopped server", "b").to("someone@sink.test").submit()
        wait_for(
            lambda: "FAILURE" in text_of(browser, '#status-rows tr[data-row="mta"] .bits'),
            30,
            "the mta row to show FAILURE",
        )
        browser.save_screenshot(str(shots / "overview-failure.png"))


def test_holding_a_message_from_the_queue_page_changes_its_state_without_reloading(
    browser: Any, shots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    profile = make_profile(tmp_path / "p", offline=True)
    token = new_token(profile)
    with postroom.logon(Profile.load(profile)) as session:
        mid = session.create_message("hold me", "b").to("someone@localhost").submit()
        other = session.create_message("held elsewhere", "b").to("someone@localhost").submit()
    with served(profile) as url:
        log_in(browser, url + "/queue", token)
        live(browser)
        browser.execute_script("window.__same_page = true")
        row = f'#queue tr[data-id="{mid}"]'
        assert text_of(browser, row + " .state") == "queued"
        browser.find_element(By.CSS_SELECTOR, row + ' button[data-action="hold"]').click()
        wait_for(lambda: text_of(browser, row + " .state") == "held", why="the row to say held")
        assert browser.execute_script("return window.__same_page === true"), "the page was reloaded"
        with postroom.logon(Profile.load(profile)) as session:
            entry = session.queue_entry(mid)
            assert entry is not None and entry.state == "held"
            # Held by another process: the store's notification comes to the page as a server-sent event.
            events = "return Number(document.body.dataset.events || 0)"
            before = browser.execute_script(events)
            session.hold(other)
        wait_for(lambda: browser.execute_script(events) > before, why="a server-sent event")
        wait_for(lambda: text_of(browser, f'#queue tr[data-id="{other}"] .state') == "held", why="the live update")
        assert browser.execute_script("return window.__same_page === true"), "the page was reloaded"
        browser.save_screenshot(str(shots / "queue.png"))
        browser.get(url + f"/message/{mid}")
        assert "held" in text_of(browser, "#queue-state")
        browser.save_screenshot(str(shots / "message.png"))


def test_send_receive_from_the_page_while_offline_delivers_the_message(
    browser: Any, shots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    profile = make_profile(tmp_path / "p", offline=True)
    token = new_token(profile)
    with postroom.logon(Profile.load(profile)) as session:
        mid = session.create_message("send me", "b").to("someone@localhost").submit()
    with served(profile) as url:
        log_in(browser, url + "/", token)
        assert text_of(browser, "#mode") == "offline"
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="send-receive"]').click()
        wait_for(lambda: "1 sent" in text_of(browser, "#said"), 30, "the Send/Receive summary")
        wait_for(lambda: text_of(browser, '#queue-counts td[data-state="queued"]') == "0", why="an empty queue")
    with postroom.logon(Profile.load(profile)) as session:
        assert [r.state for r in session.recipient_report(mid)] == ["delivered"]


def test_trying_an_address_in_the_routing_box_shows_the_transport_offered_first(
    browser: Any, shots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    profile = make_profile(tmp_path / "p")
    with served(profile) as url:
        browser.get(url + "/routing")
        assert "local" in text_of(browser, "#order")
        box = browser.find_element(By.ID, "address")
        box.send_keys("someone@localhost")
        box.submit()
        wait_for(lambda: "local" in text_of(browser, "#answer"), why="the routing answer")
        assert "offered first" in text_of(browser, "#answer")
        browser.save_screenshot(str(shots / "routing.png"))
        box = browser.find_element(By.ID, "address")
        box.clear()
        box.send_keys("someone@elsewhere.test")
        box.submit()
        wait_for(lambda: "NDR" in text_of(browser, "#answer"), why="no transport: NDR")


def test_hostile_subjects_names_and_attachment_names_render_as_text_and_run_no_script(
    browser: Any, shots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    profile = make_profile(tmp_path / "p", offline=True)
    with postroom.logon(Profile.load(profile)) as session:
        ids = []
        for payload in XSS:
            draft = session.create_message(payload, "b")
            draft.add_recipient("someone@localhost", name=payload)
            draft.attach_bytes(payload.replace("/", "_") + ".txt", b"x")
            ids.append(draft.submit())
    with served(profile) as url:
        browser.get(url + "/queue")
        subjects = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#queue td.subject")]
        assert subjects == XSS
        for mid, payload in zip(ids, XSS, strict=True):
            browser.get(url + f"/message/{mid}")
            assert text_of(browser, "#subject") == payload
            assert text_of(browser, "#recipients td.name") == payload
            assert text_of(browser, "#attachments") == payload.replace("/", "_") + ".txt"
            assert browser.find_elements(By.CSS_SELECTOR, "#live img") == []
            assert browser.execute_script("return window.__pwned === undefined")
        browser.save_screenshot(str(shots / "xss.png"))
