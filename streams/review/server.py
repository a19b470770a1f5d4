"""``phrasestream review``: the review page's web server (aiohttp), with the review topic's consumer beside it.

Why aiohttp: it is installed already (Faust runs on it), so the page adds no dependency; it
serves plain HTML and a little JSON from one asyncio loop, and the blocking work (psycopg2,
confluent-kafka) runs in a small thread pool. Starlette or FastAPI would add packages for
features (validation, OpenAPI) a handful of form handlers do not need.

Routes (every one needs HTTP basic auth; every POST a CSRF token, field ``csrf``)::

    GET  /                      -> /queue
    GET  /queue                 the open items of the reviewer; ?region=&model=&reason=&label=&order=margin|oldest
    GET  /next                  -> the first open item of the filter (same query), or the queue
    GET  /items/<item_id>       one item and its answer form
    POST /items/<item_id>/answer   outcome=label|skip|unsure|out_of_scope, label=..., [label_set=N], [next=/queue?...]
    POST /bulk-confirm          region=, model=, reason=, label=, [seen_until=ISO time]: confirm every suggestion
    GET  /progress              the progress panel;  GET /api/progress: the same as JSON
    GET  /api/items             ?region=&model=&reason=&label=&order=&limit= (JSON list of open items)
    GET  /api/csrf              {"reviewer": ..., "csrf": ...}

A POST answers 303 (to the next page) for a browser, or JSON when the request accepts
``application/json``. Refusals are 4xx with a message (JSON ``{"error": ...}`` or a page).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import psycopg2
from aiohttp import web

from streams.review import pages
from streams.review.security import Csrf, check_basic, same_origin
from streams.review.service import AnswerError, ReviewService
from streams.review.store import Filters

log = logging.getLogger("phrasestream.review")

READY_LINE = "review page listening on"
MAX_LIMIT = 500
SERVICE = web.AppKey("service", ReviewService)
USERS = web.AppKey("users", dict)
CSRF = web.AppKey("csrf", Csrf)
POOL = web.AppKey("pool", ThreadPoolExecutor)
INGEST = web.AppKey("ingest", object)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "") or request.path.startswith("/api/")


def _refuse(request: web.Request, status: int, message: str, reviewer: str = "") -> web.Response:
    if _wants_json(request):
        return web.json_response({"error": message}, status=status)
    return web.Response(text=pages.error_page(status, message, reviewer), status=status, content_type="text/html")


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Basic auth on every request; for a POST, the same origin and the reviewer's CSRF token."""
    users: dict[str, str] = request.app[USERS]
    reviewer = check_basic(request.headers.get("Authorization"), users)
    if reviewer is None:
        response = _refuse(request, 401, "wrong or missing user name or password")
        response.headers["WWW-Authenticate"] = 'Basic realm="phrasestream review", charset="UTF-8"'
        return response
    request["reviewer"] = reviewer
    if request.method == "POST":
        if not same_origin(request.headers.get("Origin"), request.headers.get("Referer"), request.host):
            return _refuse(request, 403, "this form was sent from another site", reviewer)
        form = await request.post()
        request["form"] = form
        csrf: Csrf = request.app[CSRF]
        token = form.get("csrf")
        if not csrf.check(reviewer, token if isinstance(token, str) else None):
            return _refuse(request, 403, "missing or wrong form token (csrf): reload the page and answer again",
                           reviewer)
    try:
        return await handler(request)
    except AnswerError as exc:
        return _refuse(request, exc.status, exc.message, reviewer)
    except psycopg2.OperationalError as exc:
        log.warning("PostgreSQL is unreachable: %s", exc)
        return _refuse(request, 503, "the database does not answer; nothing was stored: try again soon", reviewer)


async def _run(request: web.Request, fn: Any, *args: Any) -> Any:
    """Run blocking ``fn(*args)`` in the server's thread pool."""
    pool = request.app[POOL]
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _service(request: web.Request) -> ReviewService:
    return request.app[SERVICE]


def _filters(values: Any) -> Filters:
    def get(name: str) -> str | None:
        value = values.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    order = get("order") or "margin"
    if order not in ("margin", "oldest"):
        raise AnswerError(400, f"unknown order {order!r}: margin or oldest")
    return Filters(get("region"), get("model"), get("reason"), get("label"), order)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


async def index(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/queue")


async def queue(request: web.Request) -> web.StreamResponse:
    filters = _filters(request.query)
    seen_until = datetime.now(UTC).isoformat()
    view = await _run(request, _service(request).queue_view, request["reviewer"], filters)
    token = request.app[CSRF].token(request["reviewer"])
    html = pages.queue_page(request["reviewer"], view["items"], view["queues"], filters, view["heads"],
                            view["labels"], token, seen_until)
    return web.Response(text=html, content_type="text/html")


async def next_item(request: web.Request) -> web.StreamResponse:
    """Redirect to the first open item of the filter (the one the queue would list first), or to the queue."""
    filters = _filters(request.query)
    view = await _run(request, _service(request).queue_view, request["reviewer"], filters, 1)
    query = urlencode(filters.query())
    if view["items"]:
        raise web.HTTPSeeOther(f"/items/{view['items'][0]['item_id']}?{query}")
    raise web.HTTPSeeOther(f"/queue?{query}")


async def api_items(request: web.Request) -> web.StreamResponse:
    filters = _filters(request.query)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise AnswerError(400, f"limit must be a whole number, got {request.query.get('limit')!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise AnswerError(400, f"limit must be 1 to {MAX_LIMIT}")
    view = await _run(request, _service(request).queue_view, request["reviewer"], filters, limit)
    return web.json_response(_jsonable(view["items"]))


async def api_csrf(request: web.Request) -> web.StreamResponse:
    token = request.app[CSRF].token(request["reviewer"])
    return web.json_response({"reviewer": request["reviewer"], "csrf": token})


async def item(request: web.Request) -> web.StreamResponse:
    item_id = request.match_info["item_id"]
    found = await _run(request, _service(request).item_view, item_id, request["reviewer"])
    if found is None:
        raise AnswerError(404, f"no review item {item_id!r}")
    row, head = found
    mine = next((a for a in row["answers"] if a["reviewer"] == request["reviewer"]), None)
    if _wants_json(request):  # only the caller's own answer: a double item's reviewers answer blind
        return web.json_response(_jsonable({**row, "answers": [mine] if mine else [], "labels": head.labels,
                                            "label_set": head.sets.current}))
    back = urlencode({k: v for k, v in request.query.items() if k in ("region", "model", "reason", "label", "order")})
    token = request.app[CSRF].token(request["reviewer"])
    html = pages.item_page(request["reviewer"], row, head.guide, head.labels, head.suggestion(row),
                           head.runner_up(row), head.sets.current, token, back, mine)
    return web.Response(text=html, content_type="text/html")


def _next(form: Any) -> str:
    """The page to go to after a POST: the form's ``next`` when it is a path of this site, else the queue."""
    target = form.get("next")
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/queue"


async def answer(request: web.Request) -> web.StreamResponse:
    form = request["form"]

    def field(name: str) -> str | None:
        value = form.get(name)
        return value if isinstance(value, str) else None

    recorded = await _run(request, _service(request).answer, request["reviewer"], request.match_info["item_id"],
                          field("outcome"), field("label"), field("label_set"))
    log.info("answer of %s on %s: %s %s", request["reviewer"], recorded["item_id"], recorded["outcome"],
             recorded["label"] or "")
    if _wants_json(request):
        return web.json_response(recorded)
    raise web.HTTPSeeOther(_next(form))


async def bulk_confirm(request: web.Request) -> web.StreamResponse:
    form = request["form"]
    filters = _filters(form)
    raw = form.get("seen_until")
    seen_until = None
    if isinstance(raw, str) and raw.strip():
        try:
            seen_until = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise AnswerError(400, f"seen_until {raw!r} is not an ISO 8601 time") from None
        if seen_until.tzinfo is None:
            raise AnswerError(400, "seen_until needs a UTC offset")
    done = await _run(request, _service(request).bulk_confirm, request["reviewer"], filters, seen_until)
    log.info("bulk confirm of %s: %d item(s) (%s)", request["reviewer"], done["confirmed"], filters.query())
    if _wants_json(request):
        return web.json_response(done)
    raise web.HTTPSeeOther("/queue?" + urlencode(filters.query()))


async def progress_page(request: web.Request) -> web.StreamResponse:
    data = await _run(request, _service(request).progress)
    return web.Response(text=pages.progress_page(request["reviewer"], data), content_type="text/html")


async def api_progress(request: web.Request) -> web.StreamResponse:
    data = await _run(request, _service(request).progress)
    ingest = request.app.get(INGEST)
    data["ingest"] = ingest.counts.to_json() if ingest is not None else None  # type: ignore[attr-defined]
    return web.json_response(_jsonable(data))


def make_app(settings: Any, users: dict[str, str], csrf: Csrf | None = None, ingest: Any = None) -> web.Application:
    """Build the review app (no consumer started here: :func:`review_command` runs one beside it)."""
    app = web.Application(middlewares=[guard], client_max_size=256 * 1024)
    app[SERVICE] = ReviewService(settings)
    app[USERS] = users
    app[CSRF] = csrf or Csrf()
    app[POOL] = ThreadPoolExecutor(max_workers=4, thread_name_prefix="review")
    app[INGEST] = ingest
    app.router.add_get("/", index)
    app.router.add_get("/queue", queue)
    app.router.add_get("/next", next_item)
    app.router.add_get("/items/{item_id}", item)
    app.router.add_post("/items/{item_id}/answer", answer)
    app.router.add_post("/bulk-confirm", bulk_confirm)
    app.router.add_get("/progress", progress_page)
    app.router.add_get("/api/progress", api_progress)
    app.router.add_get("/api/items", api_items)
    app.router.add_get("/api/csrf", api_csrf)

    async def close_pool(app: web.Application) -> None:
        app[POOL].shutdown(wait=True)
        app[SERVICE].close()

    app.on_cleanup.append(close_pool)
    return app


def review_command(settings: Any, args: Any) -> int:
    """Run the review page until SIGINT or SIGTERM; return the exit code.

    0 stopped by a signal; 1 PostgreSQL or Kafka did not answer (Kafka within
    ``PHRASESTREAM_BROKER_WAIT_SECONDS``); 2 a bad port, reviewers list or Kafka login.
    """
    from ops.postgres.migrations import apply_migrations
    from streams.review.ingest import ReviewIngest
    from streams.review.security import ReviewersError, load_reviewers

    host = getattr(args, "host", None) or settings.review_host
    port = settings.review_port if getattr(args, "port", None) is None else args.port
    if not 0 <= port <= 65535:
        print(f"error: --port must be 0 to 65535, got {port}", file=sys.stderr)
        return 2
    try:
        users, path = load_reviewers(settings.review_users.get_secret_value(), settings.home)
    except (ReviewersError, OSError) as exc:
        print(f"error: reviewers: {exc}", file=sys.stderr)
        return 2
    if path is not None:
        print(f"reviewers and their passwords: {path} (PHRASESTREAM_REVIEW_USERS is empty)", flush=True)
    try:
        apply_migrations(settings)
    except Exception as exc:  # noqa: BLE001 - psycopg2 or ServiceError: the message says which
        print(f"error: PostgreSQL: {exc}", file=sys.stderr)
        return 1
    from ops.kafka.clients import BrokerUnreachable, KafkaAuthError, wait_for_broker

    try:
        wait_for_broker(settings, say=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    except KafkaAuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ingest = ReviewIngest(settings)
    ingest.start()
    ingest.ready.wait(30)
    if ingest.failed is not None:
        print(f"error: cannot read {settings.topic_review}: {ingest.failed}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(make_app(settings, users, ingest=ingest), host, port))
    finally:
        ingest.stop()  # the consumer closes (leaves its group) before the process ends


async def _serve(app: web.Application, host: str, port: int) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    bound = runner.addresses[0][1] if runner.addresses else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shown = f"[{host}]" if ":" in host else host
    log.info("%s http://%s:%s/", READY_LINE, shown, bound)
    print(json.dumps({"event": "review_ready", "url": f"http://{shown}:{bound}/"}), flush=True)
    await stop.wait()
    log.info("review page stopping")
    await runner.cleanup()
    return 0
