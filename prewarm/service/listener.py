"""The intent listener: CloudEvents over HTTP in, durable session state out.

Parses each request once with the official `cloudevents` SDK (binary, structured and batch modes),
authenticates, rate-limits, validates against the configured targets, stores the batch all or
nothing, and only then answers 202. Status codes follow Knative Eventing's delivery rules so a
broker retries exactly what is worth retrying (429, 503) and drops what never will succeed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import importlib.resources
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from prewarm.core import ledger, targets
from prewarm.service import clock, telemetry
from prewarm.service import cold_starts as cold_start_times
from prewarm.service.store import BatchRejected, IngestResult, Intent, StateUnavailable, Store

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_DATA_DEPTH = 32  # levels of objects and arrays an event may carry
MAX_EVENT_AGE = timedelta(hours=24)  # as long as dedup keys last: an older event could not be deduplicated
MAX_TTL_SECONDS = 7 * 24 * 3600
MIN_TTL_SECONDS = 0.001  # the store keeps milliseconds
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_JSON_FORMAT = JSONFormat()
_EVENT_TYPES = {t.value: t for t in ledger.SessionEventType}
_PRIORITIES = {p.value: p for p in ledger.Priority}
POD_PHASE_TYPE = "dev.prewarm.pod.phase"
_CORS_ALLOWED_HEADERS = "Content-Type, ce-id, ce-source, ce-type, ce-specversion, ce-subject, ce-time"


class RejectedRequest(Exception):
    """A request answered with `status` and a short plain-text reason; nothing was stored."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Edge rules: who may send, from which browser origins, and how fast."""

    tokens: tuple[str, ...] = ()  # bearer tokens for server-side emitters; empty = no token required
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to send without a token
    rate_per_second: float = 50.0  # per client (token or address)
    burst: float = 100.0
    max_clients: int = 10_000  # token buckets remembered (least recently used are forgotten)
    store_timeout: float = 5.0  # seconds a request waits for the store before it is answered 503


class TokenBuckets:
    """Per-client token buckets with bounded memory; time comes from `monotonic`."""

    def __init__(self, *, rate: float, burst: float, capacity: int, monotonic: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._capacity = capacity
        self._monotonic = monotonic
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, client: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; return 0 when allowed, else the seconds to wait before retrying."""
        now = self._monotonic()
        tokens, last = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (min(cost, self._burst) - tokens) / self._rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._capacity:
            self._buckets.popitem(last=False)
        return wait


def _fail(status: int, reason: str) -> RejectedRequest:
    return RejectedRequest(status, reason)


def _deeper_than(value: object, limit: int) -> bool:
    """Whether JSON `value` nests objects and arrays more than `limit` levels deep (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _utf8(value: str) -> bool:
    """Whether `value` encodes as UTF-8 (JSON's \ud800 escapes give lone surrogates, which do not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_cloudevents(headers: Mapping[str, str], body: bytes, *, beacon: bool = False) -> list[CloudEvent]:
    """Parse one HTTP request into CloudEvents (binary, structured or batch mode).

    With `beacon`, the body is a structured-mode event or a batch sent as text/plain: browsers
    only let navigator.sendBeacon carry CORS-safelisted types without a preflight.
    Raises RejectedRequest: 415 for an unsupported content type, 400 for a malformed event.
    """
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    has_ce_headers = any(k.lower().startswith("ce-") for k in headers)
    if beacon:
        if content_type != "text/plain":
            raise _fail(415, f"beacons are text/plain structured-mode events, not {content_type!r}")
        content_type = BATCH if body.lstrip()[:1] == b"[" else STRUCTURED
    try:
        if content_type == BATCH:
            items = json.loads(body)
            if not isinstance(items, list) or not items:
                raise _fail(400, "a batch must be a non-empty JSON array of events")
            events = []
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    raise _fail(400, f"batch[{index}] is not a JSON object")
                if _deeper_than(item, MAX_DATA_DEPTH + 1):
                    raise _fail(400, f"batch[{index}] nests more than {MAX_DATA_DEPTH} levels")
                events.append(_read_structured(json.dumps(item).encode()))
            return events
        if content_type == STRUCTURED:
            return [_read_structured(body)]
        if has_ce_headers:
            if content_type not in ("application/json", "text/json", ""):
                raise _fail(415, f"binary-mode data must be application/json, not {content_type!r}")
            message = ce_http.HTTPMessage(headers={k.lower(): v for k, v in headers.items()}, body=body)
            event = ce_http.from_binary(message, _JSON_FORMAT, CloudEvent)
            return [event]  # type: ignore[list-item]
    except RejectedRequest:
        raise
    except RecursionError as e:  # json: a body of thousands of nested [ or {
        raise _fail(400, f"malformed CloudEvent: JSON nested more than {MAX_DATA_DEPTH} levels") from e
    except (
        BaseCloudEventException,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
    ) as e:
        raise _fail(400, f"malformed CloudEvent: {_short(e)}") from e
    raise _fail(415, f"unsupported content type {content_type!r}; send {STRUCTURED}, {BATCH} or binary mode")


def _read_structured(body: bytes) -> CloudEvent:
    event = _JSON_FORMAT.read(CloudEvent, body)
    if not isinstance(event, CloudEvent):
        raise ValueError("not a CloudEvents 1.0 event")
    return event


def _short(error: Exception) -> str:
    text = str(error).replace("\n", " ")[:200]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogate reaches a response


@dataclasses.dataclass(frozen=True, slots=True)
class PodPhase:
    """A pod reached a phase of its start (observability only; not stored)."""

    target: str
    pod: str
    phase: str
    at: datetime


def translate_event(
    event: CloudEvent, *, specs: Mapping[str, targets.TargetSpec], received_at: datetime
) -> Intent | PodPhase:
    """Validate one CloudEvent's type and data against the configured targets.

    Everything the store will see is checked here: ids that encode as UTF-8, a time within
    `MAX_EVENT_AGE` before `received_at` (never after it), a finite `ttl` within bounds, data
    nested at most `MAX_DATA_DEPTH` levels. Raises RejectedRequest: 422 for an unknown type or
    target, 400 for malformed data.
    """
    event_type = _EVENT_TYPES.get(event.get_type())
    if event_type is None and event.get_type() != POD_PHASE_TYPE:
        known = [*sorted(_EVENT_TYPES), POD_PHASE_TYPE]
        raise _fail(422, f"unknown event type {event.get_type()!r}; expected one of {known}")
    source, event_id = event.get_source(), event.get_id()
    if not _utf8(source) or not _utf8(event_id):
        raise _fail(400, f"event {event_id!r}: source and id must be valid Unicode (no lone surrogates)")
    data = event.get_data()
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise _fail(400, f"event {event_id!r}: data is not JSON (or nests too deep)") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(400, f"event {event_id!r}: data must be a JSON object")
    if _deeper_than(data, MAX_DATA_DEPTH):
        raise _fail(400, f"event {event_id!r}: data nests more than {MAX_DATA_DEPTH} levels")
    target_name = data.get("target") or event.get_subject()
    if not isinstance(target_name, str) or not target_name:
        raise _fail(400, f"event {event.get_id()!r}: data.target (or subject) is required")
    spec = specs.get(target_name)
    if spec is None:
        raise _fail(422, f"event {event.get_id()!r}: unknown target {target_name[:100]!r}")
    at = _event_time(event, received_at)
    if event_type is None:
        return _translate_phase(event, data, target_name, at)
    session = data.get("session")
    if not isinstance(session, str) or not 0 < len(session) <= 128 or not _utf8(session):
        raise _fail(400, f"event {event_id!r}: data.session must be a string of 1-128 characters (valid Unicode)")
    ttl = spec.session_ttl
    if "ttl" in data:
        ttl = min(ttl, _parse_ttl(event_id, data["ttl"]))
    raw_priority = data.get("priority", ledger.Priority.INTERACTIVE.value)
    priority = _PRIORITIES.get(raw_priority) if isinstance(raw_priority, str) else None
    if priority is None:
        raise _fail(400, f"event {event_id!r}: data.priority {raw_priority!r} is not one of {list(_PRIORITIES)}")
    return Intent(
        target=target_name,
        source=source,
        id=event_id,
        event=ledger.SessionEvent(type=event_type, session=session, at=at, ttl=ttl, priority=priority),
    )


def _event_time(event: CloudEvent, received_at: datetime) -> datetime:
    """When the event happened: its `time`, never after `received_at` (a client clock ahead never
    stretches a session) and at most MAX_EVENT_AGE before it; the receipt time when it has none."""
    try:
        sent_at = event.get_time()
        if sent_at is None:
            return received_at
        sent_at = sent_at if sent_at.tzinfo is not None else sent_at.replace(tzinfo=UTC)
        at = min(sent_at.astimezone(UTC), received_at)
    except (OverflowError, ValueError, TypeError) as e:  # year 1 at +01:00 is before datetime.min
        raise _fail(400, f"event {event.get_id()!r}: time is out of range") from e
    if at < received_at - MAX_EVENT_AGE:
        hours = MAX_EVENT_AGE.total_seconds() / 3600
        raise _fail(400, f"event {event.get_id()!r}: time {at.isoformat()} is more than {hours:g} h before its receipt")
    return at


def _parse_ttl(event_id: str, raw: object) -> timedelta:
    """`data.ttl` in seconds: a finite number in [MIN_TTL_SECONDS, MAX_TTL_SECONDS]."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or (isinstance(raw, float) and not math.isfinite(raw)):
        raise _fail(400, f"event {event_id!r}: data.ttl {raw!r} is not a number of seconds")
    if raw <= 0:
        raise _fail(400, f"event {event_id!r}: data.ttl {raw!r} must be > 0")
    if not MIN_TTL_SECONDS <= raw <= MAX_TTL_SECONDS:
        shown = repr(raw)[:40]
        raise _fail(400, f"event {event_id!r}: data.ttl {shown} is not between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}")
    return timedelta(seconds=raw)


def _translate_phase(event: CloudEvent, data: Mapping[str, Any], target: str, at: datetime) -> PodPhase:
    pod, phase = data.get("pod"), data.get("phase")
    if not isinstance(pod, str) or not 0 < len(pod) <= 253 or not _utf8(pod):
        raise _fail(400, f"event {event.get_id()!r}: data.pod must be a pod name")
    if phase not in telemetry.POD_PHASES:
        raise _fail(400, f"event {event.get_id()!r}: data.phase {phase!r} is not one of {list(telemetry.POD_PHASES)}")
    return PodPhase(target=target, pod=pod, phase=phase, at=at)


TargetsView = Callable[[], Awaitable[list[dict[str, Any]]]]
MetricsText = Callable[[], tuple[bytes, str]]


class IntentListener:
    """The aiohttp handlers; build with `build_app`."""

    def __init__(
        self,
        *,
        specs: Mapping[str, targets.TargetSpec],
        store: Store,
        clock: clock.Clock,
        settings: ListenerSettings,
        targets_view: TargetsView,
        monotonic: Callable[[], float] = time.monotonic,
        telemetry: telemetry.Telemetry | None = None,
        current_floor: Callable[[str], int | None] = lambda target: None,
        note_trace: Callable[[str, str], None] = lambda target, traceparent: None,
        metrics: MetricsText | None = None,
        cold_starts: cold_start_times.ColdStartTimes | None = None,
    ) -> None:
        self._specs = specs
        self._cold_starts = cold_starts
        self._store = store
        self._clock = clock
        self._settings = settings
        self._targets_view = targets_view
        self._telemetry = telemetry
        self._current_floor = current_floor
        self._note_trace = note_trace
        self._metrics = metrics
        self._tokens = tuple(t.encode() for t in settings.tokens)
        self._buckets = TokenBuckets(
            rate=settings.rate_per_second, burst=settings.burst, capacity=settings.max_clients, monotonic=monotonic
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self._sdk = browser_sdk_source()
        self._sdk_etag = '"' + hashlib.sha256(self._sdk).hexdigest()[:32] + '"'

    def _cors_headers(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or origin not in self._settings.cors_origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Vary": "Origin",
            "Access-Control-Expose-Headers": "Retry-After",
        }

    def _client_identity(self, request: web.Request) -> str:
        """Authenticate; return the rate-limit key. Raises RejectedRequest(401)."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            presented = token.strip().encode()
            if scheme.lower() != "bearer" or not self._tokens:
                raise _fail(401, "unsupported Authorization (use Bearer with a configured token)")
            matched = False
            for known in self._tokens:
                matched |= hmac.compare_digest(presented, known)
            if not matched:
                raise _fail(401, "wrong bearer token")
            return "token:" + hashlib.sha256(presented).hexdigest()[:16]
        origin = request.headers.get("Origin")
        if self._tokens and (origin is None or origin not in self._settings.cors_origins):
            raise _fail(401, "a bearer token is required (or a browser origin on the allowlist)")
        return f"addr:{request.remote}"

    async def post_events(self, request: web.Request) -> web.Response:
        return await self._accept(request, beacon=False)

    async def post_beacon(self, request: web.Request) -> web.Response:
        return await self._accept(request, beacon=True)

    async def _accept(self, request: web.Request, *, beacon: bool) -> web.Response:
        cors = self._cors_headers(request)
        try:
            client = self._client_identity(request)
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise _fail(413, f"body over {MAX_BODY_BYTES} bytes")
            body = await _read_limited(request)
            events = parse_cloudevents(request.headers, body, beacon=beacon)
            wait = self._buckets.take(client, cost=len(events))
            if wait > 0:
                raise RejectedRequest(429, "rate limited", {"Retry-After": str(max(1, math.ceil(wait)))})
            now = self._clock.now()
            translated = [translate_event(e, specs=self._specs, received_at=now) for e in events]
            intents = [t for t in translated if isinstance(t, Intent)]
            # floors before this batch, for warm/cold starts: only read when someone records them
            floors = {i.target: self._current_floor(i.target) for i in intents} if self._telemetry is not None else {}
            try:
                async with asyncio.timeout(self._settings.store_timeout):
                    result = await self._store.record_intents(intents)
            except (StateUnavailable, TimeoutError) as e:
                log.debug("503: %s", e)
                raise RejectedRequest(503, "state store unavailable", {"Retry-After": "1"}) from e
            except BatchRejected as e:
                raise RejectedRequest(400, str(e)) from e
        except RejectedRequest as rejected:
            self.counts[f"rejected.{rejected.status}"] += 1
            if self._telemetry is not None:
                self._telemetry.record_events("unknown", f"rejected.{rejected.status}")
            reason = rejected.reason.encode("utf-8", "backslashreplace").decode("utf-8")
            return web.Response(status=rejected.status, text=reason + "\n", headers={**cors, **rejected.headers})
        self.counts["accepted"] += result.accepted
        self.counts["duplicate"] += result.duplicates
        self._observe(events, translated, intents, result, floors)
        return web.Response(status=202, headers=cors)

    def _observe(
        self,
        events: list[CloudEvent],
        translated: list[Intent | PodPhase],
        intents: list[Intent],
        result: IngestResult,
        floors: Mapping[str, int | None],
    ) -> None:
        """After the 202 is decided: metrics, pod-start traces, and trace context for decisions."""
        for event, item in zip(events, translated, strict=True):
            traceparent = event.get_extension("traceparent")
            if isinstance(traceparent, str):
                self._note_trace(item.target, traceparent)
            if isinstance(item, PodPhase) and self._cold_starts is not None:
                self._cold_starts.record(target=item.target, pod=item.pod, phase=item.phase, at=item.at)
        if self._telemetry is None:
            return
        for intent, new in zip(intents, result.new, strict=True):
            kind = intent.event.type.value.rsplit(".", 1)[1]
            self._telemetry.record_events(kind, "accepted" if new else "duplicate")
            interactive = intent.event.priority is ledger.Priority.INTERACTIVE  # batch has its own allowance
            if new and interactive and intent.event.type is ledger.SessionEventType.OPENED:
                self._telemetry.record_session_opened(intent.target, floors.get(intent.target))
        for item in translated:
            if isinstance(item, PodPhase):
                self._telemetry.record_events("phase", "accepted")
                self._telemetry.record_pod_phase(target=item.target, pod=item.pod, phase=item.phase, at=item.at)

    async def prometheus_metrics(self, request: web.Request) -> web.Response:
        """The Prometheus scrape endpoint."""
        if self._metrics is None:
            raise web.HTTPNotFound()
        body, content_type = self._metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def preflight(self, request: web.Request) -> web.Response:
        cors = self._cors_headers(request)
        if not cors:
            return web.Response(status=403, text="origin not allowed\n")
        cors.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": _CORS_ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
        return web.Response(status=204, headers=cors)

    async def browser_sdk(self, request: web.Request) -> web.Response:
        """The browser SDK, cacheable for an hour and revalidated by ETag."""
        headers = {"Cache-Control": "public, max-age=3600", "ETag": self._sdk_etag}
        cors = {"Access-Control-Allow-Origin": "*"}  # a public module, importable from any page
        if self._sdk_etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers={**headers, **cors})
        return web.Response(body=self._sdk, content_type="text/javascript", headers={**headers, **cors})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """200 while the store answers and takes writes (not a read-only replica), else 503."""
        try:
            async with asyncio.timeout(self._settings.store_timeout):
                await self._store.check_writable()
        except (StateUnavailable, TimeoutError) as e:
            return web.Response(status=503, text=f"store unavailable: {_short(e)}\n")
        return web.Response(text="ready\n")

    async def list_targets(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self._settings.store_timeout):
                view = await self._targets_view()
        except (StateUnavailable, TimeoutError) as e:
            return web.Response(status=503, text=f"store unavailable: {_short(e)}\n")
        return web.json_response({"targets": view})


async def _read_limited(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise _fail(413, f"body over {MAX_BODY_BYTES} bytes") from e


def browser_sdk_source() -> bytes:
    """The browser SDK shipped as package data (prewarm/sdk/prewarm.js)."""
    return importlib.resources.files("prewarm.sdk").joinpath("prewarm.js").read_bytes()


def build_app(listener: IntentListener) -> web.Application:
    """The HTTP application: POST /, /events and /beacon; GET /sdk/prewarm.js, /healthz, /readyz, /targets."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/", listener.post_events)
    app.router.add_post("/events", listener.post_events)
    app.router.add_post("/beacon", listener.post_beacon)
    app.router.add_get("/sdk/prewarm.js", listener.browser_sdk)
    app.router.add_route("OPTIONS", "/", listener.preflight)
    app.router.add_route("OPTIONS", "/events", listener.preflight)
    app.router.add_route("OPTIONS", "/beacon", listener.preflight)
    app.router.add_get("/healthz", listener.healthz)
    app.router.add_get("/readyz", listener.readyz)
    app.router.add_get("/targets", listener.list_targets)
    app.router.add_get("/metrics", listener.prometheus_metrics)
    return app
