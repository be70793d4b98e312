"""Queue control in a real browser (issue #20): Playwright drives the system Chromium against one live `repscope
serve` (one worker, FIFO) for the module.

A deliberately slow suite (tests/unit/slow_suite.py: a progress report every 0.1 s for a minute, registered in the
server and worker by a sitecustomize on PYTHONPATH) gives a running job to watch: its page and the jobs page show
elapsed time and ETA, a queued one its position; Cancel stops it and the worker takes the next job; Retry queues it
again. A failed evaluation shows the user-facing message; the traceback only behind a toggle, for admins only.
No console error, no CSP violation on any page; screenshots go to tests/artifacts/queue-*.png.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

import repscope
from tests.browser.test_pages import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    CSP_PROBE,
    VIEWPORT,
    SignedInBrowser,
    shot,
    sign_in,
)
from tests.conftest import ADMIN_TOKEN
from tests.integration.procs import ROOT, base_env, free_port, start_serve, wait_healthy
from tests.integration.test_cancel_live import SITECUSTOMIZE
from tests.reference import rankme_numpy, structured_embeddings

pytestmark = pytest.mark.integration
SLOW_TICKS, SLOW_SLEEP_S = 600, 0.1  # 60 s if it ran to the end


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        if os.environ.get("REPSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail("system Chromium not found (REPSCOPE_REQUIRE_BROWSER=1); apt-get install chromium")
        pytest.skip("system Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    """A live embedded instance (API + one worker) that also knows the slow test suite."""
    tmp = tmp_path_factory.mktemp("queue-browser")
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp / "data", url, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),
                   REPSCOPE_TEST_SLOW_TICKS=str(SLOW_TICKS), REPSCOPE_TEST_SLOW_SLEEP_S=str(SLOW_SLEEP_S))
    serve = start_serve(env, port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        yield url
    finally:
        serve.stop()
        print(serve.log_tail())


def signed_in(chromium, url: str, token: str) -> SignedInBrowser:  # noqa: ANN001
    page = chromium.new_page()
    sign_in(page, url, token)
    state = page.context.storage_state()
    page.close()
    return SignedInBrowser(chromium, state)


@pytest.fixture(scope="module")
def admin(chromium, instance):
    return signed_in(chromium, instance, ADMIN_TOKEN)


@pytest.fixture(scope="module")
def tokens(instance):
    """A write-scope and a read-scope token (neither admin)."""
    client = repscope.Client(instance)
    out = {}
    for name, scope in (("queue-writer", "write"), ("queue-reader", "read")):
        response = client.http.post("/tokens", json={"name": name, "scopes": [scope]})
        assert response.status_code == 201, response.text
        out[scope] = response.json()["token"]
    return out


class Console:
    """Console errors and warnings, uncaught exceptions and CSP violations of every page opened through it."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def page(self, browser: SignedInBrowser):  # noqa: ANN201
        page = browser.new_page(viewport=VIEWPORT)
        page.add_init_script(CSP_PROBE)
        page.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.messages.append(f"uncaught: {e}"))
        return page

    def check(self, page) -> None:  # noqa: ANN001
        assert page.evaluate("() => window.__csp") == []
        assert self.messages == []


def eta_shown(page, selector: str) -> None:  # noqa: ANN001
    """Wait until `selector` reads 'elapsed N … · ETA N …' (progress past 5 %)."""
    page.wait_for_function("(sel) => /elapsed \\d.* · ETA \\d/.test(document.querySelector(sel)?.textContent || '')",
                           arg=selector, timeout=60_000)


def test_cancel_and_retry_from_the_evaluation_and_jobs_pages(admin, instance):
    url = instance
    client = repscope.Client(url)
    run = client.run(project="browser-queue", name="slow", background=False)
    small = structured_embeddings(300, 16, seed=7)
    [slow] = run.log_embeddings(step=1, embeddings=small, suites=["slow_ticks"]).ids()
    [following] = run.log_embeddings(step=2, embeddings=small, suites=["spectrum"]).ids()
    console = Console()

    page = console.page(admin)
    page.goto(f"{url}/evaluations/{slow}")
    eta_shown(page, "#queue-info")  # updated live by static/queue.js
    assert page.locator("#status-text").inner_text() == "running"
    assert page.locator('#queue-actions button[data-queue-action="cancel"]').is_visible()
    shot(page, "queue-evaluation-running")

    jobs = console.page(admin)
    jobs.goto(f"{url}/jobs")
    running_row = jobs.locator(f'#jobs-running tr[data-evaluation-id="{slow}"]')
    assert re.search(r"elapsed \d.* · ETA \d", running_row.locator(".queue-info").inner_text())
    queued_row = jobs.locator(f'#jobs-queued tr[data-evaluation-id="{following}"]')
    assert queued_row.locator(".queue-info").inner_text().startswith("position 1 in queue ")
    assert queued_row.locator('button[data-queue-action="cancel"]').count() == 1
    shot(jobs, "queue-jobs")

    # Cancel on the evaluation page: the page reloads cancelled with a Retry button; the worker goes on
    with page.expect_navigation():  # static/queue.js reloads the page once the API said yes
        page.click('#queue-actions button[data-queue-action="cancel"]')
    page.wait_for_function("() => document.querySelector('#status-text')?.textContent === 'cancelled'")
    assert page.locator('#queue-actions button[data-queue-action="retry"]').is_visible()
    stopped = time.monotonic()
    [done] = client.wait([following], timeout=60)
    assert done.status == "succeeded" and done.metrics["rankme"] == pytest.approx(rankme_numpy(small), rel=1e-6)
    assert time.monotonic() - stopped < 30  # not the ~55 s the slow job had left
    view = client.evaluation(slow)
    assert view.status == "cancelled" and "stopped at" in view.message and view.metrics == {}
    page.reload()
    assert "stopped at" in page.locator("#message").inner_text()
    shot(page, "queue-evaluation-cancelled")

    # Retry on the evaluation page queues it again; Cancel on the jobs page stops it again
    with page.expect_navigation():
        page.click('#queue-actions button[data-queue-action="retry"]')
    page.wait_for_function("() => ['queued', 'running'].includes(document.querySelector('#status-text')?.textContent)")
    jobs.wait_for_selector(f'#jobs-running tr[data-evaluation-id="{slow}"] button[data-queue-action="cancel"]',
                           timeout=30_000)  # the jobs page updates live
    with jobs.expect_navigation():
        jobs.click(f'#jobs-running tr[data-evaluation-id="{slow}"] button[data-queue-action="cancel"]')
    jobs.wait_for_selector(f'#jobs-recent tr[data-evaluation-id="{slow}"] .status.cancelled', timeout=30_000)
    assert client.evaluation(slow).status == "cancelled"
    shot(jobs, "queue-jobs-cancelled")
    for p in (page, jobs):
        console.check(p)
        p.close()


def test_failed_evaluation_shows_the_message_and_the_traceback_to_admins_only(chromium, admin, tokens, instance):
    url = instance
    client = repscope.Client(url)
    run = client.run(project="browser-queue", name="failing", background=False)
    [bad] = run.log_embeddings(step=1, embeddings=np.ones((1, 4), dtype=np.float32), suites=["spectrum"]).ids()
    [good] = run.log_embeddings(step=2, embeddings=structured_embeddings(200, 8, seed=1), suites=["spectrum"]).ids()
    failed, succeeded = client.wait([bad, good], timeout=60, raise_on_failure=False)
    assert failed.status == "failed" and succeeded.status == "succeeded"
    assert "/" not in failed.error and "Traceback" in failed.error_detail and 'File "' in failed.error_detail
    console = Console()

    page = console.page(admin)
    page.goto(f"{url}/evaluations/{bad}")
    assert page.locator("#error").inner_text() == failed.error
    detail = page.locator("details#error-detail")
    assert detail.count() == 1 and not detail.locator("pre").is_visible()  # behind the toggle
    detail.locator("summary").click()
    assert "Traceback (most recent call last)" in detail.locator("pre").inner_text()
    shot(page, "queue-failed-admin")

    writer = console.page(signed_in(chromium, url, tokens["write"]))
    writer.goto(f"{url}/evaluations/{bad}")
    assert writer.locator("#error").inner_text() == failed.error
    assert writer.locator("#error-detail").count() == 0 and "Traceback" not in writer.content()
    api = writer.request.get(f"{url}/api/v1/evaluations/{bad}").json()  # the session's cookie, not admin
    assert api["error"] == failed.error and api["error_detail"] is None
    writer.goto(f"{url}/jobs")
    failed_table = writer.locator("#jobs-failed")
    assert failed.error.splitlines()[0] in failed_table.inner_text() and "Traceback" not in writer.content()
    # the Error column shows errors: none for the success (it used to read "done")
    good_error = writer.locator(f'#jobs-recent tr[data-evaluation-id="{good}"] td.job-error').inner_text()
    assert good_error == "—"
    shot(writer, "queue-jobs-writer")
    with writer.expect_navigation():
        writer.click(f'#jobs-failed tr[data-evaluation-id="{bad}"] button[data-queue-action="retry"]')
    [again] = client.wait([bad], timeout=60, raise_on_failure=False)  # queued again: it runs, and fails again
    assert again.status == "failed" and again.attempts == 1 and again.started_at > failed.started_at
    assert again.error == failed.error

    reader = console.page(signed_in(chromium, url, tokens["read"]))
    reader.goto(f"{url}/jobs")
    assert reader.locator("#jobs-failed").count() == 1 and reader.locator("[data-queue-action]").count() == 0
    reader.goto(f"{url}/evaluations/{bad}")
    assert reader.locator("[data-queue-action]").count() == 0 and reader.locator("#error-detail").count() == 0
    for p in (page, writer, reader):
        console.check(p)
        p.close()
