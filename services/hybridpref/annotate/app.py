"""The annotation page: a small Starlette app with server-rendered Jinja2 templates.

Pages (all HTML, no front-end build; one small static script for the keyboard):
- ``GET /login``, ``POST /login`` (field ``token``), ``POST /logout``: an annotator token (see
  ``tokens``) sets an HttpOnly, SameSite=Strict cookie;
- ``GET /``: the next pair of the campaign for this annotator (``assign``), prompt and both responses
  side by side in the annotator's own A/B order (``scale.shown_order``), the 5-point scale, an optional
  rationale, skip and undo, progress;
- ``POST /label`` (``instance_id``, ``shown`` AB|BA, ``choice`` A2|A1|tie|B1|B2, ``rationale``): maps
  the choice back to the stored order and stores it with ``store.submit_labels`` (source "annotate";
  concurrent posts share one transaction, ``writer``), then redirects (303) to ``/?undo=<id>``. Posting
  the same form twice stores one vote: the store keeps one label per (instance, annotator) and answers
  "unchanged" to the repeat;
- ``POST /skip``, ``POST /undo`` (``instance_id``): skip a pair for now; delete this annotator's label
  of a pair and show the pair again;
- ``GET /healthz`` (process up), ``GET /readyz`` (the store answers).

Every response carries a strict Content-Security-Policy (scripts and styles only from this origin,
no inline script, no images or frames from anywhere else); POSTs from another origin are refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridpref.annotate.assign import Assigner
from hybridpref.annotate.render import markdown_html
from hybridpref.annotate.scale import BY_CODE, SCALE, ShownOrder, shown_order, to_stored
from hybridpref.annotate.tokens import Annotator, TokenCache, resolve_token
from hybridpref.annotate.writer import LabelWriter
from hybridpref.store.api import HumanLabel, PendingPair
from hybridpref_client.core.errors import NotFound

HERE = Path(__file__).resolve().parent
COOKIE = "hp_annotator"
SOURCE = "annotate"
MAX_RATIONALE_CHARS = 4000
MAX_ID_CHARS = 512
UNDO_WINDOW = 200  # pending pairs searched for the pair an undo brings back
MAX_WINDOW = 1000  # the store's largest pending_pairs limit
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'none'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # not "no-referrer": with it Chromium sends "Origin: null" on same-origin form posts
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass(frozen=True)
class AppConfig:
    """``campaign``: the campaign name served (looked up under each annotator's vendor); ``seed``: the
    A/B shuffling seed (keep it across restarts: a reload must show the same order); ``secure_cookies``:
    mark the sign-in cookie Secure (serve behind TLS); ``lease_s``: how long a shown pair is held for
    its annotator; ``token_cache_s``: how long a token's annotator is remembered (revocation delay)."""

    campaign: str
    seed: int = 0
    secure_cookies: bool = False
    lease_s: float = 600.0
    token_cache_s: float = 10.0  # a revoked token stops working within this many seconds
    progress_s: float = 1.0  # the progress line may be this stale (spares a counting query per page)
    title: str = "hybridpref annotation"
    extra_headers: dict[str, str] = field(default_factory=dict)


class SecurityHeaders:
    """Pure ASGI middleware adding ``SECURITY_HEADERS`` to every HTTP response (static files too)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.raw
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BadForm(Exception):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field, self.description = field, description


def create_app(store: Any, config: AppConfig, assigner: Assigner | None = None) -> Starlette:
    """The ASGI app serving ``config.campaign`` from ``store`` (a ``CampaignStore`` with the annotator
    token methods of ``tokens.AnnotatorTokenStore``)."""
    assigner = assigner or Assigner(lease_s=config.lease_s)
    writer = LabelWriter(store.submit_labels, config.campaign)
    tokens = TokenCache(store, ttl_s=config.token_cache_s)
    # auto_reload off: templates ship with the package; no stat() of each template per page
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False)
    env.globals.update(title=config.title, campaign=config.campaign, scale=SCALE)

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def see_other(path: str) -> RedirectResponse:
        return RedirectResponse(path, status_code=303)

    async def who(request: Request) -> Annotator | None:
        token = request.cookies.get(COOKIE, "")
        if not token:
            return None
        return tokens.cached(token) or await run_in_threadpool(tokens.resolve, token)

    def same_origin(request: Request) -> bool:
        """CSRF guard beside the SameSite=Strict cookie: a browser says where a POST comes from
        (Sec-Fetch-Site; older ones only Origin). Non-browser clients send neither: the cookie decides."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")

    async def form_of(request: Request) -> dict[str, str]:
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def field_of(form: dict[str, str], name: str, limit: int = MAX_ID_CHARS) -> str:
        value = form.get(name, "")
        if not value:
            raise BadForm(name, "missing")
        if len(value) > limit:
            raise BadForm(name, f"longer than {limit} characters")
        return value

    campaigns: dict[str, tuple[float, Any | None]] = {}  # vendor -> (read at, Campaign or None)

    def campaign_and_pending(annotator: Annotator, limit: int) -> tuple[Any | None, list[PendingPair]]:
        """(campaign or None if this vendor has none of that name, pending pairs): one worker-thread hop.
        The campaign (its counts feed the progress line) is re-read at most every ``progress_s``."""
        read_at, campaign = campaigns.get(annotator.vendor, (float("-inf"), None))
        if time.monotonic() - read_at >= config.progress_s:
            try:
                campaign = store.get_campaign(annotator.vendor, config.campaign)
            except NotFound:
                campaign = None
            campaigns[annotator.vendor] = (time.monotonic(), campaign)
        if campaign is None:
            return None, []
        return campaign, store.pending_pairs(annotator.vendor, config.campaign, annotator.name, limit)

    # ------------------------------------------------------------------ pages

    async def login_form(request: Request) -> Response:
        return page("login.html", error=None)

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return PlainTextResponse("cross-origin request refused", status_code=403)
        token = (await form_of(request)).get("token", "").strip()
        annotator = await run_in_threadpool(resolve_token, store, token) if token else None
        if annotator is None:
            return page("login.html", status=401, error="That token is not valid. Ask your campaign owner for a new one.")
        response = see_other("/")
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=config.secure_cookies, max_age=14 * 24 * 3600, path="/"
        )
        return response

    async def logout(request: Request) -> Response:
        response = see_other("/login")
        response.delete_cookie(COOKIE, path="/")
        return response

    async def index(request: Request) -> Response:
        annotator = await who(request)
        if annotator is None:
            return see_other("/login")
        wanted = request.query_params.get("instance")
        vendor, name = annotator.vendor, config.campaign
        limit = min(MAX_WINDOW, max(UNDO_WINDOW if wanted else 0, assigner.window(vendor, name, annotator.name)))
        snapshot_at = assigner.now()
        campaign, pending = await run_in_threadpool(campaign_and_pending, annotator, limit)
        if campaign is None:
            return page(
                "message.html",
                status=404,
                annotator=annotator,
                message=f"Your organisation runs no campaign named {config.campaign!r}.",
            )
        pair = assigner.choose(vendor, name, annotator.name, pending, wanted=wanted, snapshot_at=snapshot_at)
        undo = request.query_params.get("undo")
        progress = {
            "done": campaign.human_routed - campaign.pairs_pending,
            "total": campaign.human_routed,
            "left": campaign.pairs_pending,
            "skipped": assigner.skipped(vendor, name, annotator.name),
        }
        if pair is None:
            return page(
                "message.html",
                annotator=annotator,
                progress=progress,
                undo=undo,
                message="Nothing left for you in this campaign. Thank you!",
            )
        return page(
            "pair.html",
            annotator=annotator,
            progress=progress,
            undo=undo,
            notice=request.query_params.get("notice"),
            **_pair_view(pair, config.seed, annotator.name),
        )

    async def label(request: Request) -> Response:
        annotator = await who(request)
        if annotator is None or not same_origin(request):
            return PlainTextResponse("sign in first", status_code=403)
        try:
            form = await form_of(request)
            instance_id = field_of(form, "instance_id")
            shown = field_of(form, "shown")
            if shown not in ("AB", "BA"):
                raise BadForm("shown", "AB or BA")
            choice = BY_CODE.get(field_of(form, "choice"))
            if choice is None:
                raise BadForm("choice", "one of " + ", ".join(BY_CODE))
            rationale = form.get("rationale", "").strip()
            if len(rationale) > MAX_RATIONALE_CHARS:
                raise BadForm("rationale", f"longer than {MAX_RATIONALE_CHARS} characters")
        except BadForm as exc:
            return page("message.html", status=400, annotator=annotator, message=f"Bad form: {exc.field}: {exc.description}")
        preference, strength = to_stored(choice, shown)  # type: ignore[arg-type]
        item = HumanLabel(
            instance_id=instance_id,
            annotator=annotator.name,
            preference=preference,
            strength=strength,
            rationale=rationale,
            source=SOURCE,
        )
        try:
            result = await writer.submit(annotator.vendor, item)
        except NotFound:
            return page(
                "message.html",
                status=404,
                annotator=annotator,
                message=f"Your organisation runs no campaign named {config.campaign!r}.",
            )
        if result.status == "rejected":  # the store names the field as labels[i].field: i is the batch's
            why = re.sub(r"^labels\[\d+\]\.?", "", result.error)
            return page("message.html", status=400, annotator=annotator, message=f"Not stored: {why}")
        assigner.submitted(annotator.vendor, config.campaign, annotator.name, instance_id)
        return see_other("/?undo=" + quote(instance_id, safe=""))

    async def skip(request: Request) -> Response:
        annotator = await who(request)
        if annotator is None or not same_origin(request):
            return PlainTextResponse("sign in first", status_code=403)
        form = await form_of(request)
        if form.get("again"):
            assigner.clear_skips(annotator.vendor, config.campaign, annotator.name)
        elif 0 < len(instance_id := form.get("instance_id", "")) <= MAX_ID_CHARS:
            assigner.skip(annotator.vendor, config.campaign, annotator.name, instance_id)
        return see_other("/")

    async def undo(request: Request) -> Response:
        annotator = await who(request)
        if annotator is None or not same_origin(request):
            return PlainTextResponse("sign in first", status_code=403)
        instance_id = (await form_of(request)).get("instance_id", "")
        if not 0 < len(instance_id) <= MAX_ID_CHARS:
            return see_other("/")
        try:
            deleted = await run_in_threadpool(store.delete_label, annotator.vendor, config.campaign, instance_id, annotator.name)
        except NotFound:
            deleted = False
        if not deleted:
            return see_other("/?notice=nothing-to-undo")
        assigner.undone(annotator.vendor, config.campaign, annotator.name, instance_id)
        return see_other("/?instance=" + quote(instance_id, safe=""))

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for one; an empty answer keeps their consoles clean

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        try:
            await run_in_threadpool(store.annotator_for_token, "readiness-probe")
        except Exception as exc:  # the store is down or unreachable: not ready, say why
            return PlainTextResponse(f"store not reachable: {type(exc).__name__}", status_code=503)
        return PlainTextResponse("ok")

    app = Starlette(
        middleware=[Middleware(SecurityHeaders, headers={**SECURITY_HEADERS, **config.extra_headers})],
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/label", label, methods=["POST"]),
            Route("/skip", skip, methods=["POST"]),
            Route("/undo", undo, methods=["POST"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )
    app.state.writer = writer  # for tests and benchmarks (commit counts)
    return app


def _pair_view(pair: PendingPair, seed: int, annotator: str) -> dict[str, Any]:
    """Template values for one pair in the annotator's order: left/right HTML and the hidden fields."""
    shown: ShownOrder = shown_order(seed, annotator, pair.instance_id)
    left, right = (pair.response_a, pair.response_b) if shown == "AB" else (pair.response_b, pair.response_a)
    return {
        "instance_id": pair.instance_id,
        "shown": shown,
        "prompt_html": Markup(markdown_html(pair.prompt)),
        "left_html": Markup(markdown_html(left)),
        "right_html": Markup(markdown_html(right)),
        "votes": pair.votes,
        "votes_needed": pair.votes_needed,
    }
