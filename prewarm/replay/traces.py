"""Request traces for replay, parsed once at the edge into per-target arrays.

Two formats: the Alibaba GenAI serving trace (one row per request) and the Azure Functions 2019
trace (per-minute invocation counts per function, with execution-time statistics in a sibling
file). Every problem is reported with its file, line and column; a bad file raises `TraceError`.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import numpy as np

MAX_REPORTED_PROBLEMS = 20
# The Azure sample does not say which day it records; minute 1 starts here (pick --score-from in this frame).
AZURE_DAY_START = datetime(2019, 7, 15, tzinfo=UTC)
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


class TraceFormat(enum.Enum):
    """The trace layouts `prewarm replay` reads."""

    ALIBABA_GENAI = "alibaba-genai"
    AZURE_FUNCTIONS = "azure-functions"


class TraceError(ValueError):
    """A trace or distribution file that cannot be used; the message names each line and column."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_REPORTED_PROBLEMS])
        more = len(self.problems) - MAX_REPORTED_PROBLEMS
        extra = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"cannot read {path}:\n{shown}{extra}")


@dataclasses.dataclass(frozen=True, slots=True)
class TargetRequests:
    """One target's requests, sorted by arrival: seconds since the epoch, run time, session group."""

    name: str
    arrivals: np.ndarray  # float64 seconds since the Unix epoch, non-decreasing
    exec_seconds: np.ndarray  # float64, >= 0
    groups: tuple[str, ...]  # the user group of each request ("" when the trace has none)
    batch: np.ndarray | None = None  # bool per request: a batch request; None when all are interactive

    def batch_mask(self) -> np.ndarray:
        """True for each batch request (recorded traces have none)."""
        return np.zeros(self.arrivals.size, dtype=bool) if self.batch is None else self.batch


@dataclasses.dataclass(frozen=True, slots=True)
class Trace:
    """All targets of a trace and the span it covers."""

    targets: tuple[TargetRequests, ...]
    start: float  # seconds since the epoch
    end: float
    skipped: int = 0  # rows that name no target (e.g. PENDING requests never routed to a model)

    @property
    def requests(self) -> int:
        return sum(len(t.arrivals) for t in self.targets)


def parse_timestamp(text: str) -> float:
    """`YYYY-MM-DD HH:MM:SS` (UTC) to seconds since the epoch; raises ValueError otherwise."""
    return datetime.strptime(text.strip(), _TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()


def _open(path: Path) -> TextIO:
    """A trace file opened for csv; TraceError (not OSError) when it cannot be."""
    try:
        return path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise TraceError(path, [f"cannot open: {e.strerror}"]) from e


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            found = ", ".join(header) if header else "no header"
            raise TraceError(path, [f"line 1: missing column {c!r} (found: {found})" for c in missing])
        for row in reader:
            yield reader.line_num, row


def read_alibaba_genai(path: Path) -> Trace:
    """Read the Alibaba GenAI request trace: target = checkpoint_model_version_id.

    Rows without a model (requests that never reached one) are counted in `skipped`; an empty
    `exec_time_seconds` takes the median of that target's known run times.
    """
    columns = ("gmt_create", "exec_time_seconds", "groupId", "checkpoint_model_version_id")
    problems: list[str] = []
    per_target: dict[str, list[tuple[float, float, str]]] = {}
    skipped = 0
    for line, row in _rows(path, columns):
        stamp, run, model = row["gmt_create"] or "", row["exec_time_seconds"] or "", row["checkpoint_model_version_id"]
        try:
            at = parse_timestamp(stamp)
        except ValueError:
            problems.append(f"line {line}, column 'gmt_create': bad timestamp {stamp!r} (want YYYY-MM-DD HH:MM:SS)")
            continue
        seconds = math.nan
        if run.strip():
            try:
                seconds = float(run)
            except ValueError:
                seconds = -1.0
            if not (math.isfinite(seconds) and seconds >= 0):
                problems.append(f"line {line}, column 'exec_time_seconds': {run!r} is not a duration >= 0")
                continue
        if not model:
            skipped += 1
            continue
        per_target.setdefault(model, []).append((at, seconds, row["groupId"] or ""))
    if problems:
        raise TraceError(path, problems)
    if not per_target:
        raise TraceError(path, ["no requests"])
    return dataclasses.replace(_build_trace(per_target), skipped=skipped)


def _build_trace(per_target: dict[str, list[tuple[float, float, str]]]) -> Trace:
    built = []
    for name in sorted(per_target):
        rows = sorted(per_target[name], key=lambda r: r[0])
        arrivals = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))
        runs = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        known = runs[~np.isnan(runs)]
        runs[np.isnan(runs)] = float(np.median(known)) if known.size else 0.0
        built.append(TargetRequests(name, arrivals, runs, tuple(r[2] for r in rows)))
    start = min(float(t.arrivals[0]) for t in built)
    end = max(float(t.arrivals[-1]) for t in built)
    return Trace(tuple(built), start, end)


def azure_durations_path(invocations: Path) -> Path:
    """The execution-time file published beside an invocation file (`..._inv.csv` -> `..._run.csv`)."""
    return invocations.with_name(invocations.name.replace("_inv", "_run"))


def read_azure_functions(path: Path, *, seed: int) -> Trace:
    """Read per-minute Azure Functions counts; arrivals are spread uniformly within each minute.

    The trace records no arrival times inside a minute, so a generator seeded with `seed` places
    them. Run time is the function's `Average` (ms) from the sibling `_run.csv` file.
    """
    durations = _read_azure_durations(azure_durations_path(path))
    problems: list[str] = []
    rng = np.random.default_rng(seed)
    per_target: dict[str, list[tuple[float, float, str]]] = {}
    day_start = AZURE_DAY_START.timestamp()
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if "HashFunction" not in header:
            raise TraceError(path, ["line 1: missing column 'HashFunction'"])
        name_at = header.index("HashFunction")
        minute_columns = [(i, c) for i, c in enumerate(header) if c.endswith("_minute")]
        if not minute_columns:
            raise TraceError(path, ["line 1: no '<N>_minute' columns"])
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                problems.append(f"line {line}: {len(row)} fields, header has {len(header)}")
                continue
            name = row[name_at]
            if name not in durations:
                problems.append(f"line {line}, column 'HashFunction': {name!r} has no run time in the _run.csv file")
                continue
            arrivals: list[float] = []
            for index, column in minute_columns:
                text = row[index]
                try:
                    count = int(text)
                except ValueError:
                    count = -1
                if count < 0:
                    problems.append(f"line {line}, column {column!r}: {text!r} is not a count >= 0")
                    break
                if count:
                    minute = int(column.split("_", 1)[0]) - 1
                    offsets = np.sort(rng.random(count)) * 60.0
                    arrivals.extend((day_start + minute * 60.0 + offsets).tolist())
            if arrivals:
                run = durations[name]
                per_target.setdefault(name, []).extend((at, run, "") for at in arrivals)
    if problems:
        raise TraceError(path, problems)
    if not per_target:
        raise TraceError(path, ["no invocations"])
    return _build_trace(per_target)


def _read_azure_durations(path: Path) -> dict[str, float]:
    durations: dict[str, float] = {}
    problems: list[str] = []
    for line, row in _rows(path, ("HashFunction", "Average")):
        try:
            average_ms = float(row["Average"])
        except ValueError:
            average_ms = -1.0
        if not (math.isfinite(average_ms) and average_ms >= 0):
            problems.append(f"line {line}, column 'Average': {row['Average']!r} is not a duration >= 0 (ms)")
            continue
        durations[row["HashFunction"]] = average_ms / 1000.0
    if problems:
        raise TraceError(path, problems)
    return durations


def read_trace(path: Path, trace_format: TraceFormat, *, seed: int) -> Trace:
    """Read `path` in `trace_format`; raises TraceError naming every bad line and column."""
    if trace_format is TraceFormat.ALIBABA_GENAI:
        return read_alibaba_genai(path)
    return read_azure_functions(path, seed=seed)


def seconds_from_ms(text: str) -> float | None:
    """A duration written in milliseconds, in seconds; None unless it is a finite number > 0."""
    try:
        ms = float(text)
    except ValueError:
        return None
    return ms / 1000.0 if math.isfinite(ms) and ms > 0 else None


def read_cold_start_distribution(path: Path) -> np.ndarray:
    """Cold-start durations in seconds from the `value` column (milliseconds) of a CSV file."""
    values: list[float] = []
    problems: list[str] = []
    for line, row in _rows(path, ("value",)):
        text = row["value"] or ""
        seconds = seconds_from_ms(text)
        if seconds is None:
            problems.append(f"line {line}, column 'value': {text!r} is not a duration > 0 (ms)")
            continue
        values.append(seconds)
    if problems:
        raise TraceError(path, problems)
    if not values:
        raise TraceError(path, ["no values"])
    return np.asarray(values, dtype=np.float64)


# Weights tiers a cold-start distribution may name (docs/semi-warm.md): the model's weights were
# already staged on the node's volume, or were not (read from the model store or hub).
STAGED = "staged"
NOT_STAGED = "not staged"
_TIER_SPELLINGS = {"staged": STAGED, "not staged": NOT_STAGED, "not-staged": NOT_STAGED, "not_staged": NOT_STAGED}
ANY_TARGET = ""  # samples for every target without rows of its own


@dataclasses.dataclass(frozen=True, slots=True)
class ColdStartTiers:
    """Cold-start samples in seconds by weights tier, then by target (ANY_TARGET for the rest).

    One tier ("") when the file has no `tier` column; both STAGED and NOT_STAGED when it has.
    """

    samples: Mapping[str, Mapping[str, np.ndarray]]

    @property
    def tiered(self) -> bool:
        return STAGED in self.samples

    def for_targets(self, tier: str, names: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(samples for every target, samples by target name) of one tier; KeyError naming the
        target that has neither its own rows nor the tier's shared ones."""
        table = self.samples[tier]
        shared = table.get(ANY_TARGET)
        own = {name: table[name] for name in names if name in table}
        missing = [name for name in names if name not in own and shared is None]
        if missing:
            raise KeyError(f"tier {tier or '(none)'!r} has no cold starts for {', '.join(missing)}")
        return (shared if shared is not None else next(iter(own.values()))), own


def read_cold_start_tiers(path: Path) -> ColdStartTiers:
    """Cold starts (ms in `value`) with an optional `tier` (staged / not staged) and `target` column."""
    collected: dict[str, dict[str, list[float]]] = {}
    problems: list[str] = []
    for line, row in _rows(path, ("value",)):
        seconds = seconds_from_ms(row["value"] or "")
        raw_tier = (row.get("tier") or "").strip().lower() if "tier" in row else None
        tier = "" if raw_tier is None else _TIER_SPELLINGS.get(raw_tier)
        if seconds is None:
            problems.append(f"line {line}, column 'value': {row['value']!r} is not a duration > 0 (ms)")
        if tier is None:
            problems.append(f"line {line}, column 'tier': {row.get('tier')!r} is not 'staged' or 'not staged'")
        if seconds is None or tier is None:
            continue
        target = (row.get("target") or "").strip()
        collected.setdefault(tier, {}).setdefault(target, []).append(seconds)
    if not collected and not problems:
        problems.append("no values")
    if collected and "" not in collected:
        problems += [f"tier {tier!r}: no rows" for tier in (NOT_STAGED, STAGED) if tier not in collected]
    if problems:
        raise TraceError(path, problems)
    return ColdStartTiers(
        {
            tier: {target: np.asarray(values, dtype=np.float64) for target, values in by_target.items()}
            for tier, by_target in collected.items()
        }
    )


def sessions_of(
    groups: Iterable[str], arrivals: np.ndarray, finishes: np.ndarray, gap: timedelta
) -> list[tuple[float, float]]:
    """Sessions of one target: runs of one group's requests with gaps under `gap`.

    Each session is (first arrival, last finish), sorted by first arrival.
    """
    limit = gap.total_seconds()
    open_runs: dict[str, list[float]] = {}  # group -> [first arrival, last arrival, last finish]
    sessions: list[tuple[float, float]] = []
    for group, at, done in zip(groups, arrivals.tolist(), finishes.tolist(), strict=True):
        run = open_runs.get(group)
        if run is not None and at - run[1] < limit:
            run[1] = at
            run[2] = max(run[2], done)
            continue
        if run is not None:
            sessions.append((run[0], run[2]))
        open_runs[group] = [at, at, done]
    sessions.extend((run[0], run[2]) for run in open_runs.values())
    sessions.sort()
    return sessions


def trace_from_minute_counts(
    counts: Mapping[str, Mapping[int, int]], *, request_seconds: float, seed: int
) -> Trace | None:
    """A trace from per-minute arrival counts (absolute minutes since the epoch), as live history
    records them: each minute's arrivals spread uniformly inside it with a seeded generator, each
    running `request_seconds`. None when no target has an arrival."""
    per_target: dict[str, list[tuple[float, float, str]]] = {}
    for index, name in enumerate(sorted(counts)):
        rng = np.random.default_rng([seed, index])
        rows: list[tuple[float, float, str]] = []
        for minute, count in sorted(counts[name].items()):
            if count > 0:
                offsets = np.sort(rng.uniform(0.0, 60.0, int(count)))
                rows.extend((minute * 60.0 + float(o), request_seconds, "") for o in offsets)
        if rows:
            per_target[name] = rows
    return _build_trace(per_target) if per_target else None
