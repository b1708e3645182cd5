"""The Prefect UI in a real browser, as a team member sees it: Debian's chromium driven
headless by Playwright against the stack `lanewise up` starts (tests/stack_helpers.py).

A backfill triggered through the REST API (as the custom-run form sends it) runs to
Completed; then (1) its flow run's page shows its name and state, and its Artifacts tab
the cost artifact, whose page shows what the ledger says the run cost; (2) the backfill
deployment's Run > Custom run form offers the task as a choice among the catalog's batch
tasks, shows each field's description from lanewise/batch/flow_params.py, dates as date
pickers, and no 'Property is type "None"'.

Screenshots (whole pages, PNG) are kept in tests/output/browser/ (git-ignored; CI keeps
it in its checkout). Select with `-m browser`; about 40 s, most of it `lanewise up`.
Chromium comes from Debian (`./dev browser`, or .ci/run); Playwright never downloads one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from lanewise.batch.flow_params import BackfillParams, batch_task_names
from tests.stack_helpers import (
    ROOT,
    Stack,
    ledger_cost,
    ledger_run,
    ok,
    running_stack,
    submit,
    tickets,
    wait_final,
)

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "tests" / "output" / "browser"
# The machine's network is closed: without these chromium tries to reach Google's
# services (sync, updates, field trials) and its connections are refused.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-proxy-server"]
WINDOW = {"width": 1400, "height": 1000}
# The page's height: the document's, or the bottom of the tallest scrolling pane in it.
PAGE_HEIGHT = """() => Math.max(document.documentElement.scrollHeight,
    ...[...document.querySelectorAll('*')]
        .filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowY))
        .map(e => e.scrollHeight + e.getBoundingClientRect().top))"""
LOAD_MS = 30_000  # the first page of the SPA loads its bundles from the local server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="Debian's chromium is not installed: `./dev browser` installs "
                       "it (CI installs it in .ci/run, and there this test must run)"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """`lanewise up` on free ports in a temporary home, `lanewise down` at the end."""
    with running_stack(tmp_path_factory.mktemp("browser") / "home") as stack:
        yield stack


@pytest.fixture(scope="module")
def finished(stack: Stack, tmp_path_factory) -> dict[str, Any]:
    """A backfill of 30 tickets, triggered as the UI's form sends it, run to Completed:
    the flow run and its ledger record."""
    input_url = tickets(tmp_path_factory.mktemp("tickets"), 30)  # all dated 2026-08-01
    created = ok(submit(stack, "backfill", task="ticket-tagging", start="2026-08-01",
                        end="2026-08-01", input_url=input_url))
    run = wait_final(stack, created["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    return {"run": run, "ledger": ledger_run(stack, "ticket-tagging", "2026-08-01",
                                             "2026-08-01")}


@pytest.fixture(scope="module")
def shots() -> Path:
    """The screenshot folder, emptied of an earlier run's pictures."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    print(f"\nscreenshots: {SHOTS}")
    return SHOTS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium with a new empty profile (a Playwright browser context)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: .ci/run (./dev browser) installs it"
    profile = tempfile.mkdtemp(prefix="lanewise-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                viewport=WINDOW)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser) -> Iterator[Any]:
    """A new tab; its console errors are printed (they help when a selector times out)."""
    tab = browser.new_page()
    tab.set_default_timeout(LOAD_MS)
    tab.on("console", lambda m: m.type == "error" and print(f"console: {m.text[:200]}"))
    try:
        yield tab
    finally:
        tab.close()


def snap(page: Any, folder: Path, name: str) -> Path:
    """A whole-page PNG of the tab. The UI scrolls inside its own pane, not the document,
    so the window is stretched to that pane's height for the picture."""
    height = WINDOW["height"]
    for _ in range(3):  # a taller window may draw more rows (the logs load as they show)
        tall = min(int(page.evaluate(PAGE_HEIGHT)), 8000)
        if tall <= height:
            break
        height = tall
        page.set_viewport_size({"width": WINDOW["width"], "height": height})
        page.wait_for_timeout(300)  # a frame or two to lay the taller page out
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(WINDOW)
    print(f"screenshot: {path}")
    return path


def field(page: Any, title: str) -> Any:
    """The form's property whose label starts with `title` (the innermost one)."""
    from playwright.sync_api import expect

    label = page.locator(".schema-form-property__label").filter(has_text=title)
    expect(label.first).to_be_visible()
    return page.locator(".schema-form-property").filter(has=label).last


def test_the_finished_run_page_shows_its_name_state_and_cost_artifact(stack, finished,
                                                                       page, shots):
    from playwright.sync_api import expect

    run = finished["run"]
    page.goto(f"{stack.state['ui_url']}/runs/flow-run/{run['id']}")
    heading = page.locator(".page-heading").first
    expect(heading.locator(".p-bread-crumbs__crumb").last).to_have_text(run["name"])
    assert run["name"] == "ticket-tagging 2026-08-01"
    expect(heading.locator(".state-badge")).to_have_text("Completed")
    # The run's logs name its batch (lanewise logs it as it creates it).
    batch_id = finished["ledger"]["batch_ids"][0]
    expect(page.locator(".log-row").filter(has_text=batch_id).first).to_be_visible()
    snap(page, shots, "1-flow-run")

    page.locator(".p-tab", has_text="Artifacts").click()
    titles = page.locator(".artifact-card__title")
    cost_card = page.locator(".artifact-card").filter(
        has=page.locator(".artifact-card__title", has_text="ticket-tagging-batch-cost"))
    expect(cost_card).to_have_count(1)
    expect(cost_card).to_contain_text("the run has spent $")
    assert "ticket-tagging-batch-summary" in titles.all_inner_texts()
    snap(page, shots, "2-flow-run-artifacts")

    # The cost artifact's page shows what the ledger says the run cost.
    cost_card.click()
    page.wait_for_url("**/artifacts/artifact/**")
    row = page.locator("tr").filter(has=page.get_by_text("cost of the run in all USD",
                                                         exact=True))
    expect(row).to_have_count(1)
    cost = ledger_cost(finished["ledger"]["items"])
    assert cost > 0
    expect(row.locator("td").last).to_have_text(f"{cost:.6f}")  # as the artifact rounds it
    snap(page, shots, "3-cost-artifact")


def test_the_backfill_custom_run_form_offers_the_tasks_and_describes_each_field(stack, page,
                                                                                shots):
    from playwright.sync_api import expect

    # As a user gets there: the deployment's page, Run, Custom run.
    deployment = stack.deployment("backfill")
    page.goto(f"{stack.state['ui_url']}/deployments/deployment/{deployment['id']}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(f"**/deployments/deployment/{deployment['id']}/run**")
    expect(page.get_by_text(BackfillParams.__doc__.strip(), exact=True)).to_be_visible()

    # Every field with its title, "(Optional)" when it may be left empty, and its
    # description from the pydantic model.
    for name, spec in BackfillParams.model_fields.items():
        prop = field(page, spec.title)
        label = spec.title + ("" if spec.is_required() else " (Optional)")
        expect(prop.locator(".schema-form-property__label").first, name).to_have_text(label)
        expect(prop.locator(".schema-form-property__description").first,
               name).to_have_text(spec.description)
    for title in ("Start", "End"):  # dates are date pickers, not text boxes
        expect(field(page, title).locator(".p-date-input")).to_have_count(1)
    # The form is drawn (checked above); nothing in it fell back to "unsupported type".
    expect(page.get_by_text('Property is type', exact=False)).to_have_count(0)
    snap(page, shots, "4-custom-run-form")

    # The task is a choice among the catalog's batch tasks, not a text box. Here (headless
    # chromium) a mouse click on Prefect 3.8.8's select opens and at once closes it (the
    # focus goes back to its button): the arrow key opens it, as a keyboard user does.
    task = field(page, "Task")
    expect(task.locator("input, textarea")).to_have_count(0)
    task.locator(".p-select-button__control").focus()
    page.keyboard.press("ArrowDown")
    options = page.locator(".p-select-options [role=option]")
    expect(options).to_have_count(len(batch_task_names()))
    assert options.all_inner_texts() == batch_task_names()
    snap(page, shots, "5-custom-run-task-choices")
    options.filter(has_text="ticket-tagging").click()
    expect(task.locator(".p-select-button__value")).to_have_text("ticket-tagging")
    expect(options).to_have_count(0)
    snap(page, shots, "6-custom-run-task-chosen")
