"""Reads targets' per-minute request counts from Prometheus's HTTP API (`/api/v1/query_range`).

The adapter between the live forecaster and Prometheus: one query per preset and namespace (a
promql target reads alone), ranges split at Prometheus's 11,000-point limit, the JSON matrix
turned into counts by `forecast/request_history.py`. A failed query is reported per target with
Prometheus's own `errorType` and `error`; nothing here turns a failure into zero requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from prewarm.core import targets
from prewarm.forecast import request_history
from prewarm.service import telemetry

log = logging.getLogger(__name__)

QUERY_RANGE_PATH = "/api/v1/query_range"
# errorType values that say the query itself is wrong, not that Prometheus is unwell
_QUERY_ERRORS = frozenset({"bad_data", "execution", "not_found"})


@dataclasses.dataclass(frozen=True, slots=True)
class PrometheusSettings:
    """Where Prometheus is and how to talk to it (`--prometheus`, `PREWARM_PROMETHEUS_*`)."""

    url: str
    token: str | None = dataclasses.field(default=None, repr=False)  # bearer token, never logged
    ca_file: Path | None = None  # CA bundle for an https URL with a private CA
    timeout: timedelta = timedelta(seconds=30)  # per query_range call
    concurrency: int = 4  # query_range calls in flight at once
    coverage: str = request_history.DEFAULT_COVERAGE  # selector whose samples mark the minutes recorded


class HistoryUnavailable(RuntimeError):
    """Prometheus could not be reached or did not answer in time; the message says how."""


class HistoryQueryError(RuntimeError):
    """Prometheus answered that the query is wrong, with its `errorType` and `error`."""

    def __init__(self, error_type: str, error: str) -> None:
        self.error_type = error_type
        self.error = error
        super().__init__(f"{error_type}: {error}")


def require_prometheus(
    specs: Sequence[targets.TargetSpec], settings: PrometheusSettings | None, *, source: str
) -> None:
    """Raise ConfigError naming each target whose `forecast.history` has no Prometheus to read."""
    if settings is not None:
        return
    problems = [
        targets.Problem(
            f"{spec.ref}: forecast.history",
            spec.forecast.history.preset.value,
            "needs --prometheus or PREWARM_PROMETHEUS_URL",
        )
        for spec in specs
        if spec.forecast.history is not None
    ]
    if problems:
        raise targets.ConfigError(source, problems)


def open_session(settings: PrometheusSettings) -> aiohttp.ClientSession:
    """An HTTP session for Prometheus: bearer token, CA and timeout applied. For the composition root."""
    headers = {"Accept": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file is not None else None
    connector = aiohttp.TCPConnector(ssl=context if context is not None else True, limit=settings.concurrency)
    timeout = aiohttp.ClientTimeout(total=settings.timeout.total_seconds())
    return aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout)


class PrometheusClient:
    """`query_range` calls at the history step; counts its calls (`calls`) for tests and benchmarks."""

    def __init__(self, *, session: aiohttp.ClientSession, settings: PrometheusSettings) -> None:
        self._session = session
        self.coverage = settings.coverage
        self._url = settings.url.rstrip("/") + QUERY_RANGE_PATH
        self._limit = asyncio.Semaphore(settings.concurrency)
        self.calls = 0

    async def query_range(self, expression: str, first_minute: int, end_minute: int) -> list[dict[str, Any]]:
        """The matrix (`data.result`) whose points are the counts of minutes [first, end).

        Raises HistoryQueryError when Prometheus rejects the query, HistoryUnavailable otherwise.
        """
        start, end = request_history.evaluation_range(first_minute, end_minute)
        form = {"query": expression, "start": str(start), "end": str(end), "step": str(request_history.STEP_SECONDS)}
        async with self._limit:
            self.calls += 1
            try:
                async with self._session.post(self._url, data=form) as response:
                    status = response.status
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = None
            except (aiohttp.ClientError, TimeoutError) as e:
                raise HistoryUnavailable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            raise HistoryUnavailable(f"HTTP {status} without a Prometheus API answer from {self._url}")
        if body["status"] == "error":
            error_type, error = str(body.get("errorType", "")), str(body.get("error", ""))
            if error_type in _QUERY_ERRORS:
                raise HistoryQueryError(error_type, error)
            raise HistoryUnavailable(f"HTTP {status}, {error_type}: {error}")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise HistoryQueryError("bad_data", f"expected a range vector (matrix), got {data.get('resultType')!r}")
        for warning in body.get("warnings") or ():
            log.debug("prometheus warning for %s: %s", expression, warning)
        result = data.get("result") or []
        return list(result)


@dataclasses.dataclass(frozen=True, slots=True)
class TargetRead:
    """What one read gave for one target: counts for the minutes read (NaN unknown), or why not."""

    query: str
    counts: np.ndarray | None
    error: str | None = None
    seconds: np.ndarray | None = None  # request seconds per minute (NaN unknown), aligned with counts


def plan_queries(
    specs: Sequence[targets.TargetSpec], *, coverage: str = request_history.DEFAULT_COVERAGE
) -> list[request_history.HistoryQuery]:
    """One query per preset and namespace, plus one per promql target."""
    groups: dict[tuple[targets.HistoryPreset, str], list[targets.TargetSpec]] = {}
    queries: list[request_history.HistoryQuery] = []
    for spec in specs:
        history = spec.forecast.history
        if history is None:
            continue
        if history.preset is targets.HistoryPreset.PROMQL:
            queries.append(request_history.target_query(spec, coverage=coverage))
        else:
            groups.setdefault((history.preset, spec.ref.namespace), []).append(spec)
    for (preset, namespace), members in sorted(groups.items(), key=lambda item: (item[0][0].value, item[0][1])):
        queries.append(request_history.group_query(preset, namespace, members, coverage=coverage))
    return queries


class HistoryReader:
    """Reads many targets' counts over one range with as few queries as their labels allow."""

    def __init__(self, client: PrometheusClient, *, telemetry: telemetry.Telemetry | None = None) -> None:
        self._client = client
        self._telemetry = telemetry

    @property
    def calls(self) -> int:
        """query_range calls made so far."""
        return self._client.calls

    def query_of(self, spec: targets.TargetSpec) -> str:
        """The expression that reads `spec` alone (what `explain` and /targets show)."""
        return request_history.target_query(spec, coverage=self._client.coverage).expression

    async def read(
        self, specs: Sequence[targets.TargetSpec], *, first_minute: int, end_minute: int
    ) -> dict[str, TargetRead]:
        """Counts of minutes [first, end) for every target in `specs` that has a history."""
        queries = plan_queries(specs, coverage=self._client.coverage)
        answers = await asyncio.gather(*(self._read_query(q, first_minute, end_minute) for q in queries))
        reads: dict[str, TargetRead] = {}
        for answer in answers:
            reads.update(answer)
        return reads

    async def _read_query(
        self, query: request_history.HistoryQuery, first_minute: int, end_minute: int
    ) -> Mapping[str, TargetRead]:
        names = [name for members in query.members.values() for name in members]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        seconds: dict[str, list[np.ndarray]] = {name: [] for name in names}
        outcome = "ok"
        try:
            for start, end in request_history.chunks(first_minute, end_minute):
                series = await self._client.query_range(query.expression, start, end)
                counts = request_history.minute_counts(query, series, first_minute=start, end_minute=end)
                spent = request_history.minute_seconds(query, series, first_minute=start, end_minute=end)
                del series
                for name in names:
                    parts[name].append(counts[name])
                    seconds[name].append(spent[name])
                self._record(query, "ok")
        except HistoryQueryError as e:
            outcome = "rejected"
            error = f"Prometheus rejected the query ({e.error_type}: {e.error})"
        except HistoryUnavailable as e:
            outcome = "unavailable"
            error = f"Prometheus unavailable ({e})"
        except request_history.HistoryResultError as e:
            outcome = "bad_result"
            error = str(e)
        if outcome != "ok":
            self._record(query, outcome)
            return {name: TargetRead(query.expression, None, error) for name in names}
        empty = np.zeros(0)
        return {
            name: TargetRead(
                query.expression,
                np.concatenate(parts[name]) if parts[name] else empty,
                seconds=np.concatenate(seconds[name]) if seconds[name] else empty,
            )
            for name in names
        }

    def _record(self, query: request_history.HistoryQuery, outcome: str) -> None:
        if self._telemetry is not None:
            self._telemetry.record_history_query(query.preset.value, outcome)
