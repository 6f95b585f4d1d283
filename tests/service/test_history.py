"""Reading request history from a real Prometheus 2.42 loaded with promtool blocks."""

from __future__ import annotations

import math
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from support import PrometheusServer, free_port

from prewarm.core import targets
from prewarm.replay import history_export, traces
from prewarm.service import history

T0 = 1_749_556_800  # 2025-06-10 12:00 UTC: a minute boundary well in the past
FIRST = T0 // 60
NAN = math.nan


def trace_of(arrivals: dict[str, list[float]]) -> traces.Trace:
    requests = tuple(
        traces.TargetRequests(name, np.asarray(times), np.ones(len(times)), ("",) * len(times))
        for name, times in sorted(arrivals.items())
    )
    everything = [t for times in arrivals.values() for t in times]
    return traces.Trace(requests, min(everything), max(everything))


def spec(
    ref: str,
    preset: targets.HistoryPreset,
    *,
    name: str | None = None,
    query: str | None = None,
) -> targets.TargetSpec:
    namespace, _, target = ref.partition("/")
    return targets.TargetSpec(
        ref=targets.TargetRef(namespace, target),
        kind=targets.TargetKind.KEDA,
        max=3,
        forecast=targets.ForecastSettings(
            True, 0.9, timedelta(seconds=60), targets.HistorySettings(preset, query=query, name=name)
        ),
    )


@pytest.fixture
async def reader_for() -> AsyncIterator[object]:
    sessions: list[aiohttp.ClientSession] = []

    def build(url: str, **settings: object) -> history.HistoryReader:
        options = history.PrometheusSettings(url=url, **settings)  # type: ignore[arg-type]
        session = history.open_session(options)
        sessions.append(session)
        return history.HistoryReader(history.PrometheusClient(session=session, settings=options))

    yield build
    for session in sessions:
        await session.close()


# two targets: m01 at minutes 0 (two requests), 1 and 4; m02 at minute 2
ARRIVALS = {"M01": [T0 + 5.0, T0 + 30.0, T0 + 65.0, T0 + 250.0], "M02": [T0 + 130.0]}
EXPECTED = {
    "replay/m01": [NAN, 2.0, 1.0, 0.0, 0.0, 1.0, 0.0, NAN],  # minutes -1 .. 6; 6 is the one after the trace
    "replay/m02": [NAN, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, NAN],
}


@pytest.mark.parametrize("preset", [p for p in targets.HistoryPreset if p is not targets.HistoryPreset.PROMQL])
async def test_each_preset_reads_back_what_history_export_wrote(
    preset: targets.HistoryPreset, prometheus_server: PrometheusServer, reader_for: object
) -> None:
    lines = history_export.openmetrics_lines(trace_of(ARRIVALS), preset=preset)
    prometheus_server.load_openmetrics("\n".join(lines) + "\n")
    prometheus_server.start()
    reader = reader_for(prometheus_server.url)  # type: ignore[operator]
    specs = [spec("replay/m01", preset), spec("replay/m02", preset)]
    reads = await reader.read(specs, first_minute=FIRST - 1, end_minute=FIRST + 7)
    assert reader.calls == 1  # one query for the preset and namespace
    assert set(reads) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        np.testing.assert_array_equal(reads[name].counts, np.asarray(expected))
    assert all(read.error is None for read in reads.values())


OLDER_EXPORTERS = f"""# TYPE revision_app_request_count counter
revision_app_request_count_total{{namespace_name="ml",service_name="old",response_code="200"}} 0 {T0}
revision_app_request_count_total{{namespace_name="ml",service_name="old",response_code="200"}} 3 {T0 + 60}
# TYPE kn_queueproxy_app_duration_seconds_count unknown
kn_queueproxy_app_duration_seconds_count{{k8s_namespace_name="ml",kn_service_name="mid"}} 0 {T0}
kn_queueproxy_app_duration_seconds_count{{k8s_namespace_name="ml",kn_service_name="mid"}} 4 {T0 + 60}
# TYPE kn_serving_invocation_duration_seconds_count unknown
kn_serving_invocation_duration_seconds_count{{k8s_namespace_name="ml",kn_service_name="both"}} 0 {T0}
kn_serving_invocation_duration_seconds_count{{k8s_namespace_name="ml",kn_service_name="both"}} 5 {T0 + 60}
# TYPE revision_app_request_count_total unknown
# TYPE interceptor_request_count counter
interceptor_request_count_total{{host="chat.example.com",method="get",code="200"}} 10 {T0}
interceptor_request_count_total{{host="chat.example.com",method="get",code="200"}} 16 {T0 + 60}
# TYPE up gauge
up{{job="x"}} 1 {T0 + 60}
# EOF
"""


async def test_older_exporters_are_read_where_no_newer_counter_exists(
    prometheus_server: PrometheusServer, reader_for: object
) -> None:
    # "both" has the newest counter and a <= 1.18 one: the newest wins, the counts are not added
    text = OLDER_EXPORTERS.replace(
        "# TYPE revision_app_request_count_total unknown\n",
        f'revision_app_request_count_total{{namespace_name="ml",service_name="both",response_code="200"}} 0 {T0}\n'
        f'revision_app_request_count_total{{namespace_name="ml",service_name="both",response_code="200"}} 50 '
        f"{T0 + 60}\n",
    ).replace("revision_app_request_count_total", "revision_app_request_count")
    text = text.replace("# TYPE revision_app_request_count counter", "# TYPE revision_app_request_count unknown")
    prometheus_server.load_openmetrics(text)
    prometheus_server.start()
    reader = reader_for(prometheus_server.url)  # type: ignore[operator]
    specs = [
        spec("ml/old", targets.HistoryPreset.KNATIVE),
        spec("ml/mid", targets.HistoryPreset.KNATIVE),
        spec("ml/both", targets.HistoryPreset.KNATIVE),
        spec("ml/chat", targets.HistoryPreset.KEDA_HTTP, name="chat.example.com"),  # add-on < 0.14: by host
    ]
    reads = await reader.read(specs, first_minute=FIRST, end_minute=FIRST + 1)
    assert reader.calls == 2  # one per preset in the namespace
    assert {name: read.counts.tolist() for name, read in reads.items()} == {
        "ml/old": [3.0],
        "ml/mid": [4.0],
        "ml/both": [5.0],
        "ml/chat": [6.0],
    }


async def test_a_range_longer_than_11000_points_is_read_in_pieces(
    prometheus_server: PrometheusServer, reader_for: object
) -> None:
    minutes = [0, 10_999, 11_000, 11_999]  # either side of the split
    prometheus_server.load_openmetrics(
        "\n".join(
            history_export.openmetrics_lines(
                trace_of({"M01": [T0 + 60.0 * m + 1 for m in minutes]}), preset=targets.HistoryPreset.VLLM
            )
        )
        + "\n"
    )
    prometheus_server.start()
    reader = reader_for(prometheus_server.url)  # type: ignore[operator]
    reads = await reader.read(
        [spec("replay/m01", targets.HistoryPreset.VLLM)], first_minute=FIRST, end_minute=FIRST + 12_000
    )
    counts = reads["replay/m01"].counts
    assert reader.calls == 2
    assert counts is not None and counts.size == 12_000
    assert np.flatnonzero(counts).tolist() == minutes
    assert counts.sum() == 4.0 and not np.isnan(counts).any()


async def test_nan_from_prometheus_is_unknown_and_promql_targets_read_alone(
    prometheus_server: PrometheusServer, reader_for: object
) -> None:
    lines = history_export.openmetrics_lines(trace_of(ARRIVALS), preset=targets.HistoryPreset.KEDA_HTTP)
    prometheus_server.load_openmetrics("\n".join(lines) + "\n")
    prometheus_server.start()
    reader = reader_for(prometheus_server.url)  # type: ignore[operator]
    template = (
        'sum(increase(interceptor_request_count_total{{route_namespace="$namespace", route_name="$name"}}[1m])){}'
    )
    specs = [
        spec("replay/m01", targets.HistoryPreset.PROMQL, query=template.format("")),
        spec("replay/m02", targets.HistoryPreset.PROMQL, query=template.format(" * NaN")),
    ]
    reads = await reader.read(specs, first_minute=FIRST - 1, end_minute=FIRST + 7)
    assert reader.calls == 2  # promql targets cannot be grouped
    assert reads["replay/m01"].counts.tolist() == pytest.approx(EXPECTED["replay/m01"], nan_ok=True)
    # NaN where the series has points (the minutes around its request), no requests where it has none
    assert reads["replay/m02"].counts.tolist() == pytest.approx([NAN, 0.0, 0.0, NAN, NAN, 0.0, 0.0, NAN], nan_ok=True)


async def test_a_query_prometheus_rejects_names_its_error_and_spares_the_other_targets(
    prometheus_server: PrometheusServer, reader_for: object
) -> None:
    prometheus_server.load_openmetrics(
        "\n".join(history_export.openmetrics_lines(trace_of(ARRIVALS), preset=targets.HistoryPreset.KNATIVE)) + "\n"
    )
    prometheus_server.start()
    reader = reader_for(prometheus_server.url)  # type: ignore[operator]
    broken = "sum(rate(kn_serving_invocation_duration_seconds_count[1m])"
    several = 'increase({__name__=~"kn_serving_invocation_duration_seconds_count", k8s_namespace_name="replay"}[1m])'
    reads = await reader.read(
        [
            spec("replay/m01", targets.HistoryPreset.KNATIVE),
            spec("replay/broken", targets.HistoryPreset.PROMQL, query=broken),
            spec("replay/several", targets.HistoryPreset.PROMQL, query=several),
        ],
        first_minute=FIRST,
        end_minute=FIRST + 3,
    )
    assert reads["replay/m01"].counts.tolist() == [2.0, 1.0, 0.0]
    rejected = reads["replay/broken"]
    assert rejected.counts is None and rejected.error is not None
    assert rejected.error.startswith("Prometheus rejected the query (bad_data: ")
    assert "parse error" in rejected.error
    assert reads["replay/several"].error == (
        "the query returned 2 series where one is expected: "
        "{k8s_namespace_name='replay', kn_service_name='m01'}; {k8s_namespace_name='replay', kn_service_name='m02'}"
    )


async def test_an_unreachable_prometheus_is_unavailable_not_empty(reader_for: object) -> None:
    reader = reader_for(f"http://127.0.0.1:{free_port()}")  # type: ignore[operator]
    reads = await reader.read(
        [spec("ml/chat", targets.HistoryPreset.KNATIVE)], first_minute=FIRST, end_minute=FIRST + 5
    )
    read = reads["ml/chat"]
    assert read.counts is None
    assert read.error is not None and read.error.startswith("Prometheus unavailable (ClientConnectorError")


async def test_the_bearer_token_is_sent_with_every_query(
    prometheus_server: PrometheusServer, reader_for: object, tmp_path: object
) -> None:
    """A proxy in front of the real Prometheus, as an authenticating gateway would be."""
    prometheus_server.load_openmetrics(
        "\n".join(history_export.openmetrics_lines(trace_of(ARRIVALS), preset=targets.HistoryPreset.KNATIVE)) + "\n"
    )
    prometheus_server.start()
    seen: list[str | None] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"status": "error", "errorType": "unauthorized", "error": "no"}, status=401)
        async with (
            aiohttp.ClientSession() as upstream,
            upstream.post(prometheus_server.url + request.path, data=await request.post()) as answer,
        ):
            return web.Response(body=await answer.read(), status=answer.status, content_type="application/json")

    app = web.Application()
    app.router.add_post(history.QUERY_RANGE_PATH, forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        good = reader_for(f"http://127.0.0.1:{port}", token="s3cret")  # type: ignore[operator]
        reads = await good.read(
            [spec("replay/m01", targets.HistoryPreset.KNATIVE)], first_minute=FIRST, end_minute=FIRST + 2
        )
        assert reads["replay/m01"].counts.tolist() == [2.0, 1.0]
        bad = reader_for(f"http://127.0.0.1:{port}")  # type: ignore[operator]
        reads = await bad.read(
            [spec("replay/m01", targets.HistoryPreset.KNATIVE)], first_minute=FIRST, end_minute=FIRST + 2
        )
        assert reads["replay/m01"].error == "Prometheus unavailable (HTTP 401, unauthorized: no)"
        assert seen == ["Bearer s3cret", None]
    finally:
        await runner.cleanup()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    directory.mkdir(parents=True, exist_ok=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=prewarm-test-ca")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return {name: directory / f"{name}.pem" for name in ("ca", "server")} | {"key": directory / "server.key"}


async def test_an_https_prometheus_is_trusted_through_the_given_ca(
    prometheus_server: PrometheusServer, reader_for: object, tmp_path: Path
) -> None:
    pki = make_certificates(tmp_path / "pki")
    prometheus_server.tls = (pki["server"], pki["key"])
    prometheus_server.load_openmetrics(
        "\n".join(history_export.openmetrics_lines(trace_of(ARRIVALS), preset=targets.HistoryPreset.KNATIVE)) + "\n"
    )
    prometheus_server.start()
    assert prometheus_server.url.startswith("https://")
    specs = [spec("replay/m01", targets.HistoryPreset.KNATIVE)]
    trusted = reader_for(prometheus_server.url, ca_file=pki["ca"])  # type: ignore[operator]
    reads = await trusted.read(specs, first_minute=FIRST, end_minute=FIRST + 2)
    assert reads["replay/m01"].counts.tolist() == [2.0, 1.0]
    untrusted = reader_for(prometheus_server.url)  # type: ignore[operator]
    reads = await untrusted.read(specs, first_minute=FIRST, end_minute=FIRST + 2)
    error = reads["replay/m01"].error
    assert error is not None and error.startswith("Prometheus unavailable (ClientConnectorCertificateError")


async def test_the_coverage_selector_decides_which_missing_minutes_are_zero(
    prometheus_server: PrometheusServer, reader_for: object
) -> None:
    prometheus_server.load_openmetrics(
        "\n".join(history_export.openmetrics_lines(trace_of(ARRIVALS), preset=targets.HistoryPreset.KNATIVE)) + "\n"
    )
    prometheus_server.start()
    specs = [spec("replay/m02", targets.HistoryPreset.KNATIVE)]
    exported = reader_for(prometheus_server.url, coverage='up{job="prewarm-history-export"}')  # type: ignore[operator]
    reads = await exported.read(specs, first_minute=FIRST - 1, end_minute=FIRST + 7)
    np.testing.assert_array_equal(reads["replay/m02"].counts, np.asarray(EXPECTED["replay/m02"]))
    elsewhere = reader_for(prometheus_server.url, coverage='up{job="another"}')  # type: ignore[operator]
    reads = await elsewhere.read(specs, first_minute=FIRST - 1, end_minute=FIRST + 7)
    # nothing says Prometheus recorded those minutes: only the minutes the series has are known
    np.testing.assert_array_equal(reads["replay/m02"].counts, np.asarray([NAN, NAN, NAN, 1.0, 0.0, NAN, NAN, NAN]))
