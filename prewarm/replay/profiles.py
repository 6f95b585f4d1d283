"""Synthetic load profiles for `prewarm replay --profile`: the traffic shapes that flatter no system.

Constant synthetic load flatters every autoscaler, so the profiles are the ones people who
benchmark serverless GPU inference ask for: idle then a sharp burst, a sawtooth of ramps and
drains, and interactive traffic sharing a model family with batch floods.

A profile is one function registered with `@profile(name)`. Its keyword-only parameters, each with
a default and an `Annotated` kind (`Duration`, `Count`, `Number`, `Share`, `Choice`), are what
`--profile-param name=value` may set; the kind parses and checks the value. It gets a seed and
returns `Request`s (seconds from the profile's start); `generate` turns them into a `Trace` that
starts at `PROFILE_START`. The same seed and parameters give the same trace. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated

import numpy as np

from prewarm.core import targets
from prewarm.replay import traces

PROFILE_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday; profile traces start here
RUN_SIGMA = 0.5  # lognormal spread of run times around each profile's median
FAMILY = "llm-7b"  # models of one family: llm-7b-0, llm-7b-1, ...


# --- parameter kinds: each parses a `--profile-param` value or raises ValueError about it ---


@dataclasses.dataclass(frozen=True, slots=True)
class Duration:
    """A duration (`90s`, `10m`, `2h` or seconds), kept as float seconds, at least `minimum`."""

    doc: str
    minimum: float = 0.0

    def parse(self, raw: str) -> float:
        seconds = targets.parse_duration(raw).total_seconds()
        if seconds < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}s")
        return seconds

    def show(self, value: object) -> str:
        return f"{value:g}s" if isinstance(value, float | int) else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Count:
    """A whole number, at least `minimum`."""

    doc: str
    minimum: int = 1

    def parse(self, raw: str) -> int:
        return targets.parse_int(raw, minimum=self.minimum)

    def show(self, value: object) -> str:
        return str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Number:
    """A finite number strictly above `above`."""

    doc: str
    above: float = 0.0

    def parse(self, raw: str) -> float:
        value = targets.parse_float(raw, minimum=-math.inf)
        if value <= self.above:
            raise ValueError(f"must be > {self.above:g}")
        return value

    def show(self, value: object) -> str:
        return f"{value:g}" if isinstance(value, float | int) else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Share:
    """A share: `30%` or a fraction, below `below`."""

    doc: str
    below: float = 1.0

    def parse(self, raw: str) -> float:
        value = targets.parse_share(raw)
        if value >= self.below:
            raise ValueError(f"must be below {self.below:.0%}")
        return value

    def show(self, value: object) -> str:
        return f"{value:.0%}" if isinstance(value, float | int) else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """One of `options`."""

    doc: str
    options: tuple[str, ...]

    def parse(self, raw: str) -> str:
        if raw not in self.options:
            raise ValueError(f"is not one of {', '.join(self.options)}")
        return raw

    def show(self, value: object) -> str:
        return str(value)


Kind = Duration | Count | Number | Share | Choice


class ProfileError(ValueError):
    """Bad profile name or parameters; the message names each parameter and its value."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("--profile-param: " + "; ".join(self.problems))


def bad(name: str, value: object, message: str) -> ProfileError:
    """One problem with one parameter, for cross-parameter checks inside a profile function."""
    return ProfileError([f"{name}={value!r} {message}"])


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One generated request: its model, arrival (seconds from the profile start), run time, user."""

    model: str
    at: float
    run: float
    group: str
    batch: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a profile: its kind (parser and description) and its default."""

    kind: Kind
    default: object


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """A registered profile: its function, a one-line summary and its parameters in order."""

    name: str
    summary: str
    function: Callable[..., list[Request]]
    parameters: Mapping[str, Parameter]


PROFILES: dict[str, Profile] = {}

# Every profile also takes these; they shape the replay rather than the traffic.
COMMON: dict[str, Parameter] = {
    "warmup": Parameter(Duration("trace time before scoring starts (trains the forecaster)"), 21600.0),
}

ProfileFunction = Callable[..., list[Request]]


def profile(name: str) -> Callable[[ProfileFunction], ProfileFunction]:
    """Register `function(seed, *, param=default, ...)` as profile `name`; each parameter is
    `Annotated[type, Kind(...)]` with a default."""

    def register(function: ProfileFunction) -> ProfileFunction:
        hints = typing.get_type_hints(function, include_extras=True)
        parameters: dict[str, Parameter] = {}
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            kinds = [m for m in getattr(hints[parameter.name], "__metadata__", ()) if isinstance(m, Kind)]
            if len(kinds) != 1 or parameter.default is inspect.Parameter.empty:
                raise TypeError(f"profile {name}: parameter {parameter.name} needs a default and one kind")
            parameters[parameter.name] = Parameter(kinds[0], parameter.default)
        summary = " ".join((inspect.getdoc(function) or name).split("\n\n")[0].split())
        PROFILES[name] = Profile(name, summary, function, parameters)
        return function

    return register


@dataclasses.dataclass(frozen=True, slots=True)
class GeneratedProfile:
    """A profile's trace, when scoring starts, and every parameter's value as used (for the report)."""

    name: str
    trace: traces.Trace
    score_from: float  # seconds since the epoch
    values: Mapping[str, object]

    def describe(self) -> str:
        spec = {**PROFILES[self.name].parameters, **COMMON}
        shown = ", ".join(f"{k}={spec[k].kind.show(v)}" for k, v in self.values.items())
        return f"{self.name} ({shown})"


def parse_parameters(name: str, assignments: Sequence[str]) -> dict[str, object]:
    """Defaults of profile `name` with `key=value` assignments applied; ProfileError lists every problem."""
    chosen = PROFILES.get(name)
    if chosen is None:
        raise ProfileError([f"{name!r} is not a profile (known: {', '.join(sorted(PROFILES))})"])
    spec = {**chosen.parameters, **COMMON}
    values = {key: parameter.default for key, parameter in spec.items()}
    problems: list[str] = []
    for text in assignments:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep:
            problems.append(f"{text!r} is not name=value")
        elif key not in spec:
            problems.append(f"{key}={raw!r}: {name} has no parameter {key!r} (known: {', '.join(spec)})")
        else:
            try:
                values[key] = spec[key].kind.parse(raw.strip())
            except ValueError as e:
                problems.append(f"{key}={raw!r} {e}")
    if problems:
        raise ProfileError(problems)
    return values


def generate(name: str, assignments: Sequence[str], *, seed: int) -> GeneratedProfile:
    """Generate profile `name` with its parameters; raises ProfileError naming each bad one."""
    values = parse_parameters(name, assignments)
    chosen = PROFILES[name]
    requests = chosen.function(seed, **{k: v for k, v in values.items() if k in chosen.parameters})
    if not requests:
        raise ProfileError([f"{name} made no requests with these parameters"])
    start = PROFILE_START.timestamp()
    trace = build_trace(requests, start=start)
    warmup = values["warmup"]
    assert isinstance(warmup, float | int)
    return GeneratedProfile(name, trace, start + float(warmup), values)


def build_trace(requests: Sequence[Request], *, start: float) -> traces.Trace:
    """Requests (offsets from `start`) as a Trace: one target per model, each sorted by arrival."""
    per_model: dict[str, list[Request]] = {}
    for request in requests:
        per_model.setdefault(request.model, []).append(request)
    built = []
    for model in sorted(per_model):
        rows = sorted(per_model[model], key=lambda r: (r.at, r.group))
        built.append(
            traces.TargetRequests(
                name=model,
                arrivals=np.fromiter((start + r.at for r in rows), dtype=np.float64, count=len(rows)),
                exec_seconds=np.fromiter((r.run for r in rows), dtype=np.float64, count=len(rows)),
                groups=tuple(r.group for r in rows),
                batch=np.fromiter((r.batch for r in rows), dtype=bool, count=len(rows)),
            )
        )
    first = min(float(t.arrivals[0]) for t in built)
    last = max(float(t.arrivals[-1]) for t in built)
    return traces.Trace(tuple(built), first, last)


# --- shared pieces ---


def family(models: int) -> tuple[list[str], np.ndarray]:
    """Model names of one family and their popularity (Zipf: the i-th gets 1/(i+1))."""
    weights = 1.0 / np.arange(1, models + 1)
    return [f"{FAMILY}-{i}" for i in range(models)], weights / weights.sum()


def run_times(rng: np.random.Generator, median: float, size: int) -> np.ndarray:
    """Lognormal run times around `median` seconds."""
    return median * np.exp(RUN_SIGMA * rng.standard_normal(size))


def burst_offsets(shape: str, count: int, length: float, rng: np.random.Generator) -> np.ndarray:
    """`count` sorted offsets in [0, length): `spike` decays from a sharp onset (scale length/5),
    `square` is uniform, `ramp` rises linearly."""
    u = rng.random(count)
    if shape == "spike":
        scale = length / 5.0
        offsets = -scale * np.log1p(-u * (1.0 - math.exp(-length / scale)))
    elif shape == "ramp":
        offsets = length * np.sqrt(u)
    else:
        offsets = length * u
    return np.sort(np.minimum(offsets, np.nextafter(length, 0.0)))


def requests_of_user(
    rng: np.random.Generator, *, model: str, group: str, start: float, count: int, think: float, run_seconds: float
) -> list[Request]:
    """One user's requests, one after another: each after the previous reply plus a pause (mean `think`)."""
    runs = run_times(rng, run_seconds, count)
    pauses = rng.exponential(think, count) if think > 0 else np.zeros(count)
    requests, at = [], start
    for run, pause in zip(runs.tolist(), pauses.tolist(), strict=True):
        requests.append(Request(model, at, run, group))
        at += run + pause
    return requests


def requests_of_users(
    rng: np.random.Generator,
    *,
    starts: np.ndarray,
    models: list[str],
    group: str,
    count: int,
    think: float,
    run_seconds: float,
) -> list[Request]:
    """Users arriving at `starts`, each sticking to its model: `<group>-user<i>`'s requests in turn."""
    requests: list[Request] = []
    for user, (start, model) in enumerate(zip(starts.tolist(), models, strict=True)):
        requests += requests_of_user(
            rng,
            model=model,
            group=f"{group}-user{user}",
            start=start,
            count=count,
            think=think,
            run_seconds=run_seconds,
        )
    return requests


# --- the profiles ---


@profile("idle-to-burst")
def idle_to_burst(
    seed: int,
    *,
    cycles: Annotated[int, Count("idle-then-burst cycles")] = 96,
    idle_min: Annotated[float, Duration("shortest silence before a burst (from the last request)")] = 600.0,
    idle_max: Annotated[float, Duration("longest silence before a burst")] = 900.0,
    burst_users: Annotated[int, Count("users arriving in each burst; each sticks to one model")] = 20,
    burst_length: Annotated[float, Duration("span over which a burst's users arrive", minimum=1.0)] = 60.0,
    burst_shape: Annotated[str, Choice("arrival density of users in a burst", ("spike", "square", "ramp"))] = "spike",
    user_requests: Annotated[int, Count("requests each user sends, one after another")] = 2,
    think: Annotated[float, Duration("mean pause between a reply and the user's next request")] = 10.0,
    models: Annotated[int, Count("models of the family")] = 3,
    run_seconds: Annotated[float, Number("median run time of a request, seconds")] = 4.0,
) -> list[Request]:
    """No traffic for idle_min..idle_max, then a sharp burst of users, again and again."""
    if idle_max < idle_min:
        raise bad("idle_max", f"{idle_max:g}s", f"must be >= idle_min ({idle_min:g}s)")
    rng = np.random.default_rng([seed, 0])
    names, popularity = family(models)
    requests: list[Request] = []
    last = 0.0
    for cycle in range(cycles):
        start = last + float(rng.uniform(idle_min, idle_max))
        offsets = burst_offsets(burst_shape, burst_users, burst_length, rng)
        requests += requests_of_users(
            rng,
            starts=start + offsets,
            models=[names[m] for m in rng.choice(models, size=burst_users, p=popularity).tolist()],
            group=f"burst{cycle}",
            count=user_requests,
            think=think,
            run_seconds=run_seconds,
        )
        last = max(r.at for r in requests)
    return requests


@profile("sawtooth")
def sawtooth(
    seed: int,
    *,
    cycles: Annotated[int, Count("ramp-and-drain cycles")] = 64,
    ramp: Annotated[float, Duration("time for the user arrival rate to rise from 0 to the peak", minimum=1.0)] = 600.0,
    drain: Annotated[float, Duration("time for it to fall from the peak to 0", minimum=1.0)] = 120.0,
    rest: Annotated[float, Duration("silence after each cycle's last request")] = 300.0,
    peak_users: Annotated[float, Number("users arriving per second at the peak, across the family")] = 0.1,
    user_requests: Annotated[int, Count("requests each user sends, one after another")] = 3,
    think: Annotated[float, Duration("mean pause between a reply and the user's next request")] = 20.0,
    models: Annotated[int, Count("models of the family")] = 3,
    run_seconds: Annotated[float, Number("median run time of a request, seconds")] = 4.0,
) -> list[Request]:
    """Repeated linear ramp-ups and drains of arriving users, with a rest between: the pool grows and
    empties every cycle."""
    rng = np.random.default_rng([seed, 0])
    names, popularity = family(models)
    rising, falling = round(peak_users * ramp / 2.0), round(peak_users * drain / 2.0)
    if rising + falling == 0:
        raise bad("peak_users", peak_users, "gives no user per cycle (peak_users x (ramp + drain) / 2 < 0.5)")
    requests: list[Request] = []
    last = -rest
    for cycle in range(cycles):
        start = last + rest
        offsets = np.concatenate(
            [ramp * np.sqrt(rng.random(rising)), ramp + drain * (1.0 - np.sqrt(rng.random(falling)))]
        )
        offsets = np.sort(np.minimum(offsets, np.nextafter(ramp + drain, 0.0)))
        requests += requests_of_users(
            rng,
            starts=start + offsets,
            models=[names[m] for m in rng.choice(models, size=offsets.size, p=popularity).tolist()],
            group=f"cycle{cycle}",
            count=user_requests,
            think=think,
            run_seconds=run_seconds,
        )
        last = max(r.at for r in requests)
    return requests


@profile("mixed-priority")
def mixed_priority(
    seed: int,
    *,
    length: Annotated[float, Duration("trace length", minimum=3600.0)] = 86400.0,
    sessions_per_hour: Annotated[float, Number("interactive sessions started per hour, across the family")] = 30.0,
    session_requests: Annotated[int, Count("requests in each interactive session, one after another")] = 4,
    think: Annotated[float, Duration("mean pause between a reply and the next request of a session")] = 30.0,
    run_seconds: Annotated[float, Number("median run time of an interactive request, seconds")] = 4.0,
    batch_share: Annotated[float, Share("share of all requests that are batch")] = 0.3,
    job_size: Annotated[int, Count("requests in each batch job (a flood on one model)")] = 50,
    job_spread: Annotated[float, Duration("span over which a job's requests arrive", minimum=1.0)] = 120.0,
    batch_run_seconds: Annotated[float, Number("median run time of a batch request, seconds")] = 20.0,
    models: Annotated[int, Count("models of the family")] = 3,
) -> list[Request]:
    """Interactive sessions and batch floods sharing one model family; the interactive part is the
    same for any batch_share (its own random stream), so batch's effect can be measured."""
    names, popularity = family(models)
    chat = np.random.default_rng([seed, 1])
    sessions = round(sessions_per_hour * length / 3600.0)
    starts = np.sort(chat.uniform(0.0, length, sessions))
    requests: list[Request] = []
    for index, start in enumerate(starts.tolist()):
        model = names[int(chat.choice(models, p=popularity))]
        requests += requests_of_user(
            chat,
            model=model,
            group=f"chat{index}",
            start=start,
            count=session_requests,
            think=think,
            run_seconds=run_seconds,
        )
    interactive = len(requests)
    jobs = np.random.default_rng([seed, 2])
    flood = round(interactive * batch_share / (1.0 - batch_share))
    sizes = [job_size] * (flood // job_size) + ([flood % job_size] if flood % job_size else [])
    for index, size in enumerate(sizes):
        model = names[int(jobs.choice(models, p=popularity))]
        start = float(jobs.uniform(0.0, max(0.0, length - job_spread)))
        offsets = np.sort(jobs.uniform(0.0, job_spread, size))
        runs = run_times(jobs, batch_run_seconds, size)
        for offset, run in zip(offsets.tolist(), runs.tolist(), strict=True):
            requests.append(Request(model, start + offset, run, f"job{index}", batch=True))
    return requests


def describe_parameters(name: str) -> list[tuple[str, str, str]]:
    """(parameter, default, meaning) rows of profile `name`, common parameters last."""
    spec = {**PROFILES[name].parameters, **COMMON}
    return [(key, p.kind.show(p.default), p.kind.doc) for key, p in spec.items()]


def profile_names() -> list[str]:
    return sorted(PROFILES)
