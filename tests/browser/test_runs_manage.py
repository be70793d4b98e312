"""Runs management in a real browser (issue #20): Playwright drives the system Chromium against one live
`repscope serve` for the module.

A write session renames a run (a clash is refused on the page), replaces its tags, writes multi-line notes,
archives it (gone from the project page until "show archived" is ticked) and restores it, then deletes it behind a
confirm dialog (dismissed once: nothing happens). A read session sees no management controls. No console error and
no CSP violation on any page; screenshots go to tests/artifacts/runs-manage-*.png.
"""

from __future__ import annotations

import pytest

import repscope
from tests.browser.test_pages import chromium, instance, shot  # noqa: F401 - module fixtures, one serve here
from tests.browser.test_queue_control import Console, signed_in
from tests.reference import structured_embeddings

pytestmark = pytest.mark.integration
PROJECT = "browser-manage"


@pytest.fixture(scope="module")
def tokens(instance):  # noqa: F811
    client = repscope.Client(instance)
    out = {}
    for name, scope in (("manage-writer", "write"), ("manage-reader", "read")):
        response = client.http.post("/tokens", json={"name": name, "scopes": [scope]})
        assert response.status_code == 201, response.text
        out[scope] = response.json()["token"]
    return out


def project_rows(page) -> list[str]:  # noqa: ANN001
    return page.locator("table.grid tbody tr td:nth-child(2) a").all_inner_texts()


def test_rename_tags_notes_archive_and_delete(chromium, instance, tokens):  # noqa: F811
    url, client = instance, repscope.Client(instance)
    run = client.run(PROJECT, "first", config={"lr": 0.1}, tags=["a"], background=False)
    client.run(PROJECT, "other", background=False)
    run.log_embeddings(step=1, embeddings=structured_embeddings(200, 8, seed=3), suites=["spectrum"]).ids()
    writer, console = signed_in(chromium, url, tokens["write"]), Console()
    page = console.page(writer)
    page.goto(f"{url}/runs/{run.id}")
    assert page.locator("#run-edit").is_visible()

    page.fill("#run-name", "other")  # taken: refused, shown on the page, nothing changes
    page.click("#run-save")
    page.wait_for_selector("#run-manage-feedback:not([hidden])")
    assert "already has a run named 'other'" in page.inner_text("#run-manage-feedback")
    assert client.get_run(run.id).name == "first"

    page.fill("#run-name", "renamed")
    page.fill("#run-tags", "baseline, lr-0.1, baseline")
    page.fill("#run-notes", "tried a larger batch\nloss spikes at step 3k")
    with page.expect_navigation():
        page.click("#run-save")
    assert page.inner_text("h1") == "renamed"
    assert page.locator("h1 + p .tag").all_inner_texts() == ["baseline", "lr-0.1"]
    assert page.inner_text("#run-notes-view") == "tried a larger batch\nloss spikes at step 3k"
    info = client.get_run(run.id)
    assert (info.name, info.tags, info.notes) == ("renamed", ["baseline", "lr-0.1"],
                                                 "tried a larger batch\nloss spikes at step 3k")
    shot(page, "runs-manage-edited")

    with page.expect_navigation():
        page.click("#run-archive")
    assert page.locator("#archived-note").is_visible() and client.get_run(run.id).archived
    project = console.page(writer)
    project.goto(f"{url}/projects/{PROJECT}")
    assert project_rows(project) == ["other"]
    project.check("#show-archived input")
    with project.expect_navigation():
        project.click("#filter button[type=submit]")
    assert project_rows(project) == ["other", "renamed"]  # newest first
    assert project.locator("tr:has(a:text-is('renamed')) .tag.archived").is_visible()
    shot(project, "runs-manage-project-archived")
    with page.expect_navigation():
        page.click("#run-archive")  # restore
    assert not client.get_run(run.id).archived and page.locator("#archived-note").count() == 0

    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click("#run-delete")
    page.wait_for_timeout(300)
    assert asked and "cannot be undone" in asked[0] and client.get_run(run.id).name == "renamed"
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        page.click("#run-delete")
    assert page.url.endswith(f"/projects/{PROJECT}") and project_rows(page) == ["other"]
    with pytest.raises(repscope.RepscopeError) as gone:
        client.get_run(run.id)
    assert gone.value.status_code == 404
    shot(page, "runs-manage-deleted")
    console.check(page)
    console.check(project)


def test_read_session_sees_no_controls(chromium, instance, tokens):  # noqa: F811
    client = repscope.Client(instance)
    run = client.run(PROJECT, "read-only", background=False)
    client.update_run(run.id, notes="visible to readers")
    console = Console()
    page = console.page(signed_in(chromium, instance, tokens["read"]))
    page.goto(f"{instance}/runs/{run.id}")
    assert page.inner_text("#run-notes-view") == "visible to readers"
    assert page.locator("#run-edit").count() == 0 and page.locator("#run-delete").count() == 0
    shot(page, "runs-manage-reader")
    console.check(page)
