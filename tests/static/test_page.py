"""The page at ``/`` in a real headless Chromium, against the served app and a real worker."""

import json
import os
import re
import shutil
import time
import urllib.request

import pytest

from jobs import keys
from tests.conftest import ROOT, ServedApp
from tests.helpers import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Set in CI: a missing browser fails the suite instead of skipping these tests.
REQUIRED = os.environ.get("CI_REQUIRE_BROWSER") == "1"


def missing(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (CI_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 640})
    page = context.new_page()
    yield page
    context.close()


def submit(page, number: int) -> None:
    page.fill("#number", str(number))
    page.click("#submit")


def job(page, number: int):
    return page.locator(".job", has=page.locator(".n", has_text=re.compile(rf"^{number}!$")))


def test_submitting_5_shows_120(page, served_app, worker):
    page.goto(served_app.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    submit(page, 5)
    entry = job(page, 5)
    entry.and_(page.locator('[data-state="done"]')).wait_for(timeout=15000)
    assert entry.locator(".result").inner_text() == "120"
    assert entry.locator(".digits").inner_text() == "3 digits"
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", entry.locator(".elapsed").inner_text())

    submit(page, 2000000)  # above MAX_NUMBER: the protocol's error, shown on the job
    refused = job(page, 2000000)
    refused.and_(page.locator('[data-state="error"]')).wait_for(timeout=15000)
    assert refused.locator(".result").inner_text().startswith("number_too_large: ")


def test_submitting_100000_shows_456574_digits_and_downloads_them(page, served_app, worker, tmp_path):
    page.goto(served_app.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    submit(page, 5)
    submit(page, 100000)
    entry = job(page, 100000)
    entry.and_(page.locator('[data-state="done"]')).wait_for(timeout=30000)
    assert entry.locator(".digits").inner_text() == "456574 digits"
    assert entry.locator(".result").inner_text() == "28242294079603478742…00000000000000000000"

    with page.expect_download() as download:
        entry.locator(".download").click()
    saved = tmp_path / "download.txt"
    download.value.save_as(saved)
    digits = saved.read_text().strip()
    assert len(digits) == 456574 and digits.startswith("28242294079603478742")

    job(page, 5).and_(page.locator('[data-state="done"]')).wait_for(timeout=15000)
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "screenshot.png")


def test_the_page_reconnects_after_a_restart_and_asks_again_for_every_pending_result(page, make_server, make_worker):
    sent, received = [], []

    def watch(ws):
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

    page.on("websocket", watch)
    numbers = [7, 3000, 9]
    server = make_server()
    page.goto(server.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    for number in numbers:  # no worker yet: the jobs stay queued
        submit(page, number)
    for number in numbers:
        job(page, number).and_(page.locator('[data-state="queued"]')).wait_for(timeout=10000)
    task_ids = {m["task_id"] for m in received if m["type"] == "result"}
    assert len(task_ids) == len(numbers)

    server.stop()
    page.wait_for_selector('#connection[data-state="closed"]')
    asked_before = len(sent)
    server = make_server(port=server.port)
    make_worker()

    for number in numbers:
        job(page, number).and_(page.locator('[data-state="done"]')).wait_for(timeout=30000)
    assert job(page, 7).locator(".result").inner_text() == "5040"
    assert job(page, 3000).locator(".digits").inner_text() == "9131 digits"
    # Every pending job was looked up by its id, none asked for again by number.
    again = sent[asked_before:]
    assert {m["task_id"] for m in again if m["type"] == "result"} == task_ids
    assert not [m for m in again if m["type"] == "factorial"]
    # One entry and one final answer shown per job.
    assert page.locator(".job").count() == len(numbers)
    assert all(job(page, n).locator(".result").count() == 1 for n in numbers)


@pytest.mark.slow
def test_the_page_backs_off_while_the_server_is_down(page, make_server):
    attempts = []
    server = make_server()
    page.goto(server.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    page.on("websocket", lambda ws: attempts.append(time.monotonic()))
    server.stop()
    page.wait_for_selector('#connection[data-state="closed"]')
    # The server is down this long: a duration, not a wait (the page's own sleep, so its events are handled).
    page.wait_for_timeout(8000)
    # Pauses of 0.25 s doubling up to 8 s, each cut by up to half at random:
    # 4 to 6 tries in 8 s, where a fixed 0.25 s pause would make about 30.
    assert 3 <= len(attempts) <= 7, attempts
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # Each pause is at least the one before (the jitter never undoes a doubling).
    assert all(later > earlier - 0.2 for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] > 1.0, gaps


def test_copy_and_download_only_on_success_and_retry_where_it_helps(page, make_server, make_worker):
    # A soft queue of one job: the first request fills it, the second is told busy.
    server = make_server(max_queue_length=1)
    page.goto(server.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    submit(page, 5)
    queued = job(page, 5)
    queued.and_(page.locator('[data-state="queued"]')).wait_for(timeout=10000)
    assert not queued.locator(".copy").is_visible() and not queued.locator(".download").is_visible()
    assert not queued.locator(".retry").is_visible()

    submit(page, 6)
    busy = job(page, 6)
    busy.and_(page.locator('[data-state="error"]')).wait_for(timeout=10000)
    assert busy.locator(".result").inner_text().startswith("busy: ")
    assert not busy.locator(".copy").is_visible() and not busy.locator(".download").is_visible()
    assert busy.locator(".retry").is_visible()

    submit(page, 2000000)  # retrying cannot help: no Retry
    too_large = job(page, 2000000)
    too_large.and_(page.locator('[data-state="error"]')).wait_for(timeout=10000)
    assert not too_large.locator(".retry").is_visible() and not too_large.locator(".download").is_visible()

    make_worker()
    queued.and_(page.locator('[data-state="done"]')).wait_for(timeout=20000)
    assert queued.locator(".copy").is_visible() and queued.locator(".download").is_visible()
    assert not queued.locator(".retry").is_visible()

    busy.locator(".retry").click()
    busy.and_(page.locator('[data-state="done"]')).wait_for(timeout=20000)
    assert busy.locator(".result").inner_text() == "720"
    assert busy.locator(".download").is_visible() and not busy.locator(".retry").is_visible()
    assert page.locator(".job").count() == 3


def test_the_page_has_an_icon(page, served_app):
    page.goto(served_app.http_url + "/")
    icon = page.request.get(served_app.http_url + page.get_attribute('link[rel="icon"]', "href"))
    assert icon.status == 200 and icon.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert icon.body()[:4] == b"\x00\x00\x01\x00"  # an ICO file's header
    assert page.request.get(served_app.http_url + "/favicon.ico").body() == icon.body()


def readme_console_snippet() -> tuple[str, str]:
    """The README's browser-console snippet, and the output its last comment promises."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```js\n(.*?)```", readme, re.S).group(1)
    expected = re.search(r"^// → (.*)$", code, re.M).group(1)
    return code, expected


def test_the_readme_console_snippet_prints_what_it_promises(page, served_app, worker):
    code, expected = readme_console_snippet()
    logged = []
    page.on("console", lambda message: logged.append(message.text))
    page.goto(served_app.http_url + "/")
    # A script tag runs it as the console would (evaluate() would call the
    # function its last line evaluates to).
    page.add_script_tag(content=code.replace("localhost:8888", f"localhost:{served_app.port}"))
    wait_until(lambda: expected in logged or page.wait_for_timeout(50), timeout=30,
               what=f"the console to print {expected!r} (got {logged})")
    assert expected == "456574 digits: 28242294079603478742…"


def test_a_page_opened_with_an_api_key_connects_with_it_and_takes_it_off_the_address_bar(
        browser, page, make_server, worker):
    server = make_server(api_keys="alice:s3cret/+key", api_keys_required="true")
    page.goto(server.http_url + "/?n=1&api_key=s3cret%2F%2Bkey#top")
    page.wait_for_selector('#connection[data-state="open"]')
    # The key is gone from the address (and so from the history); the rest of it stays.
    assert page.evaluate("location.href") == server.http_url + "/?n=1#top"
    submit(page, 6)
    job(page, 6).and_(page.locator('[data-state="done"]')).wait_for(timeout=15000)
    assert job(page, 6).locator(".result").inner_text() == "720"
    # The tab keeps the key: a reload connects again without it in the address.
    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    # Another tab without the key cannot connect.
    stranger = browser.new_context().new_page()
    try:
        stranger.goto(server.http_url + "/")
        stranger.wait_for_selector('#connection[data-state="closed"]', timeout=10000)  # refused with 401
    finally:
        stranger.context.close()


def lookup(server: ServedApp, task_id: str) -> dict:
    """``GET /api/tasks/<task_id>``: what the HTTP API says about a task."""
    with urllib.request.urlopen(f"{server.http_url}/api/tasks/{task_id}", timeout=5) as response:
        return json.loads(response.read())


def rq_status(redis_client, task_id: str) -> bytes | None:
    job_id = (redis_client.get(keys.task_job(task_id)) or task_id.encode()).decode()
    return redis_client.hget(f"rq:job:{job_id}", "status")


def test_cancel_stops_a_waiting_job_or_only_withdraws_this_page_when_another_waits(
        browser, page, make_server, redis_client, make_worker):
    # Soft jobs run; hard ones (n > 1000) wait, as no worker serves their queue.
    server = make_server()
    make_worker(queues=("soft",))
    other = browser.new_context().new_page()
    try:
        page.goto(server.http_url + "/")
        page.wait_for_selector('#connection[data-state="open"]')
        for number in (5, 3001, 3002):
            submit(page, number)
        done = job(page, 5).and_(page.locator('[data-state="done"]'))
        done.wait_for(timeout=15000)
        assert done.locator(".cancel").is_hidden()  # nothing left to cancel
        # Another page waits for 3002! too.
        other.goto(server.http_url + "/")
        other.wait_for_selector('#connection[data-state="open"]')
        submit(other, 3002)
        job(other, 3002).and_(other.locator('[data-state="queued"]')).wait_for(timeout=10000)
        for number in (3001, 3002):
            job(page, number).and_(page.locator('[data-state="queued"]')).wait_for(timeout=10000)
            assert job(page, number).locator(".cancel").is_visible()

        alone = job(page, 3001)
        alone.locator(".cancel").click()
        alone.and_(page.locator('[data-state="cancelled"]')).wait_for(timeout=10000)
        assert alone.locator(".state").inner_text() == "cancelled"
        assert alone.locator(".cancel").is_hidden()
        stopped = alone.get_attribute("data-task-id")
        assert lookup(server, stopped)["code"] == "cancelled"
        assert rq_status(redis_client, stopped) == b"canceled"

        shared = job(page, 3002)
        shared.locator(".cancel").click()
        shared.and_(page.locator('[data-state="cancelled"]')).wait_for(timeout=10000)
        assert shared.locator(".state").inner_text() == "cancelled (still computed for others)"
        assert shared.locator(".cancel").is_hidden()
        continues = shared.get_attribute("data-task-id")
        assert lookup(server, continues) == {"type": "status", "task_id": continues, "status": "queued"}
        assert job(other, 3002).get_attribute("data-state") == "queued"
        assert job(other, 3002).locator(".cancel").is_visible()
    finally:
        other.context.close()


def test_cancelling_a_job_that_ended_meanwhile_shows_its_result(page, make_server, redis_client, make_worker):
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    server = make_server()
    page.goto(server.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    submit(page, 3000)  # no worker yet: it stays queued
    entry = job(page, 3000).and_(page.locator('[data-state="queued"]'))
    entry.wait_for(timeout=10000)
    task_id = entry.get_attribute("data-task-id")
    # While the page is cut off from the server, the job ends; then Cancel is pressed.
    server.stop()
    page.wait_for_selector('#connection[data-state="closed"]')
    make_worker(queues=("hard",))
    wait_until(lambda: rq_status(redis_client, task_id) == b"finished", timeout=30, what="3000! to end")
    job(page, 3000).locator(".cancel").click()
    assert job(page, 3000).get_attribute("data-state") == "cancelling"
    assert job(page, 3000).locator(".cancel").is_hidden()

    server = make_server(port=server.port)  # the cancel goes on reconnect: "ended"
    job(page, 3000).and_(page.locator('[data-state="done"]')).wait_for(timeout=30000)
    assert job(page, 3000).locator(".digits").inner_text() == "9131 digits"
    about_it = [m["type"] for m in sent if m.get("task_id") == task_id]
    assert about_it[-2:] == ["cancel", "result"], about_it


def test_a_reload_looks_the_waiting_jobs_up_again_by_task_id(page, make_server, make_worker):
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    server = make_server()
    page.goto(server.http_url + "/")
    page.wait_for_selector('#connection[data-state="open"]')
    for number in (7, 3000):  # no worker yet: both stay queued
        submit(page, number)
    task_ids = {}
    for number in (7, 3000):
        entry = job(page, number).and_(page.locator('[data-state="queued"]'))
        entry.wait_for(timeout=10000)
        task_ids[number] = entry.get_attribute("data-task-id")
    asked_before = len(sent)

    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    for number in (7, 3000):  # listed again, newest on top, and waiting
        job(page, number).and_(page.locator('[data-state="queued"]')).wait_for(timeout=10000)
    assert [n.inner_text() for n in page.locator(".job .n").all()] == ["3000!", "7!"]
    again = sent[asked_before:]
    assert sorted(m["task_id"] for m in again if m["type"] == "result") == sorted(task_ids.values())
    assert not [m for m in again if m["type"] == "factorial"]

    make_worker()
    for number in (7, 3000):
        job(page, number).and_(page.locator('[data-state="done"]')).wait_for(timeout=30000)
    assert job(page, 7).locator(".result").inner_text() == "5040"
    assert job(page, 3000).locator(".digits").inner_text() == "9131 digits"
    # Ended jobs are not kept: a reload after that looks nothing up.
    asked_before = len(sent)
    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    assert page.locator(".job").count() == 0 and sent[asked_before:] == []
