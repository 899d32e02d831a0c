"""The annotation page in a real browser: Debian's chromium driven by Playwright (the system browser;
Playwright's own browser download cannot reach these machines).

Two annotators work one campaign (2 votes per pair) at the same time, by keyboard only. Annotator 1
labels five pairs, reloads in the middle of one, double-submits one (Enter twice, then the same form
replayed over HTTP), undoes one and labels it again; annotator 2 labels five pairs between annotator
1's steps, then skips forward to the pair whose response carries ``<script>`` and ``<img onerror>``.
The store must then hold exactly the ten expected votes, A/B mapped back to the stored order; the
hostile markup must show as text, with no dialog, no console error and no page error.

``HYBRIDPREF_DOCS_SCREENSHOTS=1`` also writes the screenshots to docs/images/ (for docs/annotators.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.annotate import VENDOR, fixture_pairs, make_store, seed_campaign, served

from hybridpref.annotate.app import AppConfig, create_app
from hybridpref.annotate.scale import SCALE, to_stored
from hybridpref.annotate.tokens import issue_token

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CAMPAIGN = "browser"
SEED = 11
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

try:
    from playwright.sync_api import Page, sync_playwright  # noqa: F401 - Page: the fixtures' type
except ImportError:  # pragma: no cover - the dev extra brings it
    sync_playwright = None

SKIP = (
    "playwright not installed (dev extra)"
    if sync_playwright is None
    else None
    if Path(CHROMIUM).exists()
    else f"{CHROMIUM} missing: `python3 scripts/dev.py setup` installs Debian's chromium (apt-get install chromium)"
)
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


class Watch:
    """Everything a page does that a script in a response could cause."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))


def _current(page: Any) -> tuple[str, str]:
    """(instance_id, shown order) of the pair on the page."""
    form = page.locator("#label-form")
    return (
        form.locator("input[name=instance_id]").get_attribute("value"),
        form.locator("input[name=shown]").get_attribute("value"),
    )


def _sign_in(page: Any, base: str, token: str, shot: Path | None = None) -> None:
    page.goto(base + "/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    if shot:
        page.screenshot(path=str(shot))
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_selector("#label-form")


def _label(page: Any, key: int) -> tuple[str, str]:
    """Pick ``key`` and press Enter; returns the labelled pair's (instance_id, shown)."""
    pair = _current(page)
    page.keyboard.press(str(key))
    assert page.locator(f'input[name=choice][data-key="{key}"]').is_checked()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_load_state()
    return pair


def _screenshot(page: Any, tmp: Path, name: str) -> Path:
    path = tmp / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("HYBRIDPREF_DOCS_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMAGES / name)
    return path


def test_two_annotators_by_keyboard(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    seed_campaign(store, CAMPAIGN, fixture_pairs(), votes_per_pair=2)
    hostile = next(p for p in fixture_pairs() if "<script>" in p["response_a"])
    tokens = {name: issue_token(store, VENDOR, name) for name in ("ann-1", "ann-2")}
    expected: dict[tuple[str, str], tuple[str, int | None]] = {}

    def expect(annotator: str, pair: tuple[str, str], key: int) -> None:
        expected[(pair[0], annotator)] = to_stored(SCALE[key - 1], pair[1])  # type: ignore[arg-type]

    with served(create_app(store, AppConfig(campaign=CAMPAIGN, seed=SEED))) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        watch = Watch()
        ctx1, ctx2 = (browser.new_context(viewport={"width": 1280, "height": 860}) for _ in range(2))
        one, two = ctx1.new_page(), ctx2.new_page()
        watch.attach(one)
        watch.attach(two)
        _sign_in(one, base, tokens["ann-1"], shot=tmp_path / "login.png")
        _sign_in(two, base, tokens["ann-2"])
        _screenshot(one, tmp_path, "annotate-pair.png")

        keys1, keys2 = [1, 5, 3, 2, 4], [4, 2, 5, 1, 3]
        shown_orders = set()
        for step in range(5):
            if step == 2:  # reload in the middle of a pair: the same pair comes back, nothing stored
                before = _current(one)
                one.keyboard.press("5")
                one.reload()
                assert _current(one) == before
                assert one.locator("input[name=choice]:checked").count() == 0
            if step == 3:  # double submit: Enter twice, then the very same form replayed over HTTP
                pair = _current(one)
                one.keyboard.press(str(keys1[step]))
                with one.expect_navigation():
                    one.keyboard.press("Enter")
                    one.keyboard.press("Enter")
                one.wait_for_load_state()
                choice = SCALE[keys1[step] - 1].code
                replay = ctx1.request.post(
                    base + "/label",
                    form={"instance_id": pair[0], "shown": pair[1], "choice": choice, "rationale": ""},
                    max_redirects=0,
                )
                assert replay.status == 303
            else:
                pair = _label(one, keys1[step])
            expect("ann-1", pair, keys1[step])
            shown_orders.add(pair[1])
            pair2 = _label(two, keys2[step])
            expect("ann-2", pair2, keys2[step])
            shown_orders.add(pair2[1])
        assert shown_orders == {"AB", "BA"}, "pick a SEED that shows both orders"

        # Undo (U) the last label of annotator 1: the pair comes back; label it again differently.
        last = next(k for k in reversed(list(expected)) if k[1] == "ann-1")
        with one.expect_navigation():
            one.keyboard.press("u")
        one.wait_for_selector("#label-form")
        assert _current(one)[0] == last[0]
        again = _label(one, 1)
        expect("ann-1", again, 1)

        # Annotator 2 skips (S) forward to the hostile pair.
        for _ in range(len(fixture_pairs())):
            if _current(two)[0] == hostile["instance_id"]:
                break
            with two.expect_navigation():
                two.keyboard.press("s")
            two.wait_for_selector("#label-form")
        assert _current(two)[0] == hostile["instance_id"]
        main = two.locator("main")
        assert main.get_by_text("<script>alert('xss-script')</script>", exact=False).is_visible()
        assert main.get_by_text("<img src=x onerror=\"alert('xss-img')\">", exact=False).is_visible()
        assert main.get_by_text("[link](javascript:alert('xss-link'))", exact=False).is_visible()
        assert main.locator("script, img, iframe, a[href^='javascript']").count() == 0
        assert two.evaluate("() => document.querySelectorAll('script').length") == 1, "only /static/annotate.js"
        _screenshot(two, tmp_path, "annotate-hostile.png")
        if os.environ.get("HYBRIDPREF_DOCS_SCREENSHOTS"):
            shutil.copy(tmp_path / "login.png", DOCS_IMAGES / "annotate-login.png")
        browser.close()

    assert watch.dialogs == [] and watch.page_errors == [], (watch.dialogs, watch.page_errors)
    assert watch.console_errors == [], watch.console_errors
    stored = {
        (c.instance_id, x.annotator): (x.preference, x.strength)
        for c, _, labels in store.returned_labels(VENDOR, CAMPAIGN)
        for x in labels
    }
    assert stored == expected
    assert len(stored) == 10
    assert {x.source for _, _, labels in store.returned_labels(VENDOR, CAMPAIGN) for x in labels} == {"annotate"}
