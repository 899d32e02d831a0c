"""The annotation page over real HTTP (uvicorn on loopback, httpx clients): sign-in, A/B order mapped
back to the stored order, idempotent posts, undo, skip, several votes per pair, spreading of
concurrent annotators, security headers. The browser-level test is tests/annotate/test_annotate_browser.py."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.annotate import VENDOR, fixture_pairs, make_store, seed_campaign, served, synthetic_pairs

from hybridpref.annotate.app import CSP, AppConfig, create_app
from hybridpref.annotate.render import markdown_html
from hybridpref.annotate.scale import BY_CODE, SCALE, from_stored, shown_order, to_stored
from hybridpref.annotate.tokens import issue_token

CAMPAIGN = "spring"
SEED = 7


def _form(html: str) -> dict[str, str]:
    """The hidden fields of the label form on a pair page."""
    instance = re.search(r'name="instance_id" value="([^"]*)"', html)
    shown = re.search(r'name="shown" value="(AB|BA)"', html)
    assert instance and shown, html[:2000]
    return {"instance_id": instance.group(1), "shown": shown.group(1)}


def _labels(store: Any) -> dict[tuple[str, str], Any]:
    """(instance, annotator) -> HumanLabel, every stored label of the campaign."""
    return {
        (c.instance_id, label.annotator): label for c, _, labels in store.returned_labels(VENDOR, CAMPAIGN) for label in labels
    }


def _client(base: str, store: Any, annotator: str, vendor: str = VENDOR) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    token = issue_token(store, vendor, annotator)
    r = client.post("/login", data={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/"
    return client


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = make_store(tmp_path)
    seed_campaign(s, CAMPAIGN, fixture_pairs(), votes_per_pair=2)
    return s


@pytest.fixture
def base(store: Any) -> Any:
    with served(create_app(store, AppConfig(campaign=CAMPAIGN, seed=SEED))) as url:
        yield url


# ----------------------------------------------------------------------------- pure parts


def test_scale_round_trip_and_orientation() -> None:
    for choice in SCALE:
        for shown in ("AB", "BA"):
            pref, strength = to_stored(choice, shown)
            assert from_stored(pref, strength, shown) == choice
    # Shown BA: the left response is the stored B, so "A clearly better" is stored as B, clearly.
    assert to_stored(BY_CODE["A2"], "BA") == ("B", 2)
    assert to_stored(BY_CODE["B1"], "BA") == ("A", 1)
    assert to_stored(BY_CODE["tie"], "BA") == ("tie", None)


def test_shown_order_is_deterministic_balanced_and_per_annotator() -> None:
    ids = [f"i{i}" for i in range(2000)]
    one = [shown_order(SEED, "ann-1", i) for i in ids]
    assert one == [shown_order(SEED, "ann-1", i) for i in ids]
    assert 0.45 < one.count("BA") / len(one) < 0.55
    two = [shown_order(SEED, "ann-2", i) for i in ids]
    agree = sum(a == b for a, b in zip(one, two, strict=True)) / len(ids)
    assert 0.45 < agree < 0.55, "orders of two annotators look correlated"
    other_seed = [shown_order(SEED + 1, "ann-1", i) for i in ids]
    assert one != other_seed


def test_markdown_renders_hostile_html_as_text() -> None:
    html = markdown_html(
        "<script>alert(1)</script> <img src=x onerror=alert(2)> [l](javascript:alert(3)) ![p](http://x/p.png)\n\n```\n<b>code</b>\n```"
    )
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "[l](javascript:alert(3))" in html, "a javascript: link stays text"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<code>&lt;b&gt;code&lt;/b&gt;\n</code>" in html
    assert "<strong>x</strong>" in markdown_html("**x**")
    assert "one<br />\ntwo" in markdown_html("one\ntwo")
    assert 'rel="noopener noreferrer nofollow"' in markdown_html("[a](https://example.org)")


# ----------------------------------------------------------------------------- over HTTP


def test_sign_in_required_and_bad_tokens_refused(base: str, store: Any) -> None:
    with httpx.Client(base_url=base, follow_redirects=False) as anon:
        assert anon.get("/").headers["location"] == "/login"
        assert anon.post("/label", data={"instance_id": "ann-01", "shown": "AB", "choice": "A2"}).status_code == 403
        r = anon.post("/login", data={"token": "not-a-real-token"})
        assert r.status_code == 401 and "not valid" in r.text
        assert "set-cookie" not in r.headers
    assert _labels(store) == {}


def test_label_maps_shown_order_back_to_stored(base: str, store: Any) -> None:
    client = _client(base, store, "ann-1")
    seen: dict[str, str] = {}
    for _ in range(len(fixture_pairs())):
        page = client.get("/")
        assert page.status_code == 200
        form = _form(page.text)
        seen[form["instance_id"]] = form["shown"]
        assert form["shown"] == shown_order(SEED, "ann-1", form["instance_id"])
        r = client.post("/label", data={**form, "choice": "A2", "rationale": "left one"})
        assert r.status_code == 303
    assert set(seen.values()) == {"AB", "BA"}, "the fixture should show both orders"
    labels = _labels(store)
    assert len(labels) == len(seen)
    for instance_id, shown in seen.items():
        label = labels[(instance_id, "ann-1")]
        # "A clearly better" picks the LEFT response: stored A when shown AB, stored B when shown BA.
        assert (label.preference, label.strength) == ("A" if shown == "AB" else "B", 2)
        assert label.rationale == "left one" and label.source == "annotate"
    assert "Nothing left for you" in client.get("/").text


def test_double_submit_stores_one_vote(base: str, store: Any) -> None:
    client = _client(base, store, "ann-1")
    form = _form(client.get("/").text)
    body = {**form, "choice": "B1"}
    assert client.post("/label", data=body).status_code == 303
    assert client.post("/label", data=body).status_code == 303
    labels = _labels(store)
    assert list(labels) == [(form["instance_id"], "ann-1")]
    assert _form(client.get("/").text)["instance_id"] != form["instance_id"]
    # A changed mind replaces the vote; it never adds one.
    assert client.post("/label", data={**form, "choice": "tie"}).status_code == 303
    assert len(_labels(store)) == 1 and _labels(store)[(form["instance_id"], "ann-1")].preference == "tie"


def test_undo_deletes_the_last_label_and_shows_the_pair_again(base: str, store: Any) -> None:
    client = _client(base, store, "ann-1")
    first = _form(client.get("/").text)
    client.post("/label", data={**first, "choice": "A1"})
    second_page = client.get("/?undo=" + first["instance_id"])
    assert 'id="undo"' in second_page.text
    assert _form(second_page.text)["instance_id"] != first["instance_id"]
    r = client.post("/undo", data={"instance_id": first["instance_id"]})
    assert r.status_code == 303
    again = client.get(r.headers["location"])
    assert _form(again.text) == first
    assert _labels(store) == {}
    # Undo of something not (or no longer) labelled says so and changes nothing.
    r = client.post("/undo", data={"instance_id": first["instance_id"]})
    assert "Nothing to undo" in client.get(r.headers["location"]).text


def test_skip_moves_on_and_skipped_pairs_come_back_on_request(base: str, store: Any) -> None:
    client = _client(base, store, "ann-1")
    order = []
    for _ in range(len(fixture_pairs())):
        form = _form(client.get("/").text)
        order.append(form["instance_id"])
        client.post("/skip", data={"instance_id": form["instance_id"]})
    assert sorted(order) == sorted(p["instance_id"] for p in fixture_pairs())
    done = client.get("/").text
    assert "Nothing left" in done and "skipped 8" in done
    client.post("/skip", data={"again": "1"})
    assert _form(client.get("/").text)["instance_id"] == order[0]
    assert _labels(store) == {}


def test_votes_per_pair_and_concurrent_annotators_are_spread(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    pairs = synthetic_pairs(6)
    seed_campaign(store, CAMPAIGN, pairs, votes_per_pair=1)
    with served(create_app(store, AppConfig(campaign=CAMPAIGN, seed=SEED))) as base:
        one, two = _client(base, store, "ann-1"), _client(base, store, "ann-2")
        # Both open a page at the same time: one vote per pair is needed, so they get different pairs.
        f1, f2 = _form(one.get("/").text), _form(two.get("/").text)
        assert f1["instance_id"] != f2["instance_id"]
        # A reload keeps each annotator on their own pair.
        assert _form(one.get("/").text) == f1 and _form(two.get("/").text) == f2
        while True:
            progressed = False
            for client in (one, two):
                page = client.get("/").text
                if "Nothing left" in page:
                    continue
                client.post("/label", data={**_form(page), "choice": "tie"})
                progressed = True
            if not progressed:
                break
    per_pair = Counter(instance for instance, _ in _labels(store))
    assert per_pair == {p["instance_id"]: 1 for p in pairs}, "each pair needs one vote: none wasted"
    assert store.get_campaign(VENDOR, CAMPAIGN).pairs_pending == 0


def test_two_votes_per_pair_from_two_annotators(base: str, store: Any) -> None:
    clients = {name: _client(base, store, name) for name in ("ann-1", "ann-2", "ann-3")}
    for name in ("ann-1", "ann-2"):
        while "Nothing left" not in (page := clients[name].get("/").text):
            clients[name].post("/label", data={**_form(page), "choice": "B2"})
    assert "Nothing left" in clients["ann-3"].get("/").text, "every pair has its 2 votes"
    per_pair = Counter(instance for instance, _ in _labels(store))
    assert set(per_pair.values()) == {2} and len(per_pair) == len(fixture_pairs())


def test_progress_counts_pairs_done_and_left(store: Any) -> None:
    with served(create_app(store, AppConfig(campaign=CAMPAIGN, seed=SEED, progress_s=0))) as base:
        one, two = _client(base, store, "ann-1"), _client(base, store, "ann-2")
        assert "0 / 8 pairs done · 8 left" in one.get("/").text
        form = _form(one.get("/").text)
        one.post("/label", data={**form, "choice": "A1"})
        two.post("/label", data={**form, "choice": "A1"})
        page = one.get("/").text
    assert re.search(r"1 / 8 pairs done · 7 left", page), page[:1500]


def test_bad_form_names_the_field(base: str, store: Any) -> None:
    client = _client(base, store, "ann-1")
    form = _form(client.get("/").text)
    cases = {
        "choice": {**form, "choice": "A3"},
        "shown": {**form, "shown": "XY", "choice": "A1"},
        "instance_id": {"shown": "AB", "choice": "A1"},
        "rationale": {**form, "choice": "A1", "rationale": "x" * 5000},
    }
    for field, body in cases.items():
        r = client.post("/label", data=body)
        assert r.status_code == 400 and f"Bad form: {field}" in r.text, (field, r.text[:500])
    r = client.post("/label", data={"instance_id": "not-in-campaign", "shown": "AB", "choice": "A1"})
    assert r.status_code == 400 and "Not stored" in r.text
    assert _labels(store) == {}


def test_other_vendor_sees_no_campaign(base: str, store: Any) -> None:
    client = _client(base, store, "ann-9", vendor="globex")
    r = client.get("/")
    assert r.status_code == 404 and "no campaign" in r.text
    assert client.post("/label", data={"instance_id": "ann-01", "shown": "AB", "choice": "A1"}).status_code == 404
    assert _labels(store) == {}


def test_security_headers_and_cross_origin_posts(base: str, store: Any) -> None:
    client = _client(base, store, "ann-1")
    for path in ("/", "/login", "/static/annotate.js", "/static/annotate.css", "/healthz"):
        r = client.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    page = client.get("/")
    assert page.headers["cache-control"] == "no-store"
    form = _form(page.text)
    evil = client.post(
        "/label", data={**form, "choice": "A1"}, headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    )
    assert evil.status_code == 403
    older_browser = client.post("/label", data={**form, "choice": "A1"}, headers={"origin": "http://evil.example"})
    assert older_browser.status_code == 403
    assert _labels(store) == {}
    same = client.post("/label", data={**form, "choice": "A1"}, headers={"origin": base, "sec-fetch-site": "same-origin"})
    assert same.status_code == 303


def test_sign_in_cookie_is_http_only_and_strict(base: str, store: Any) -> None:
    token = issue_token(store, VENDOR, "ann-1")
    with httpx.Client(base_url=base, follow_redirects=False) as c:
        cookie = c.post("/login", data={"token": token}).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert store.annotator_for_token(token) == (VENDOR, "ann-1")
    store.revoke_annotator_tokens(VENDOR, "ann-1")
    with httpx.Client(base_url=base, follow_redirects=False) as c:
        assert c.post("/login", data={"token": token}).status_code == 401


def test_health_and_readiness(base: str) -> None:
    assert httpx.get(base + "/healthz").text == "ok"
    assert httpx.get(base + "/readyz").status_code == 200


def test_token_cache_remembers_for_ttl_only(tmp_path: Path) -> None:
    from hybridpref.annotate.tokens import TokenCache

    store = make_store(tmp_path)
    token = issue_token(store, VENDOR, "ann-1")
    now = [100.0]
    cache = TokenCache(store, ttl_s=10, clock=lambda: now[0])
    assert cache.cached(token) is None
    assert cache.resolve(token).name == "ann-1"
    store.revoke_annotator_tokens(VENDOR, "ann-1")
    assert cache.cached(token).name == "ann-1", "within the TTL the cached answer stands"
    now[0] += 10.5
    assert cache.cached(token) is None and cache.resolve(token) is None, "after it, the revocation holds"
    assert cache.resolve("unknown") is None and cache.cached("unknown") is None


def test_cli_token_and_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hybridpref annotate token add` prints a token once; `hybridpref annotate` serves the page with it."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from support.annotate import store_url

    from hybridpref.cli.main import main as cli_main

    store = make_store(tmp_path)
    seed_campaign(store, CAMPAIGN, fixture_pairs(), votes_per_pair=1)
    db = store_url(tmp_path)
    assert cli_main(["annotate", "token", "add", "--vendor", VENDOR, "--annotator", "ann-cli", "--db", db]) == 0
    token = capsys.readouterr().out.strip()
    assert store.annotator_for_token(token) == (VENDOR, "ann-cli")
    assert cli_main(["annotate", "--campaign", CAMPAIGN, "--port", "70000", "--db", db]) == 2
    assert "--port" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; from hybridpref.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "annotate",
            "--campaign",
            CAMPAIGN,
            "--port",
            str(port),
            "--db",
            db,
            "--log-level",
            "warning",
        ],
        env={**os.environ, "HYBRIDPREF_ANNOTATE_SEED": str(SEED)},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "the page did not start"
                time.sleep(0.2)
        with httpx.Client(base_url=base, follow_redirects=False) as client:
            assert client.post("/login", data={"token": token}).status_code == 303
            form = _form(client.get("/").text)
            assert form["shown"] == shown_order(SEED, "ann-cli", form["instance_id"]), "the seed came from the env"
            assert client.post("/label", data={**form, "choice": "tie"}).status_code == 303
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert _labels(store)[(form["instance_id"], "ann-cli")].preference == "tie"
    assert cli_main(["annotate", "token", "revoke", "--vendor", VENDOR, "--annotator", "ann-cli", "--db", db]) == 0
    assert store.annotator_for_token(token) is None
