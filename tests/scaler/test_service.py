"""The KEDA external scaler over a real grpc.aio server and real stubs built from our .proto."""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import RedisServer, wait_for

from prewarm.core import policy, targets
from prewarm.service import clock, composition
from prewarm.service.store import MemoryStore, RedisStore, encode_decision
from scaler import __main__ as scaler_main
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CHAT = targets.TargetSpec(ref=targets.TargetRef("ml", "chat"), kind=targets.TargetKind.KEDA, max=5)


def decision(spec: targets.TargetSpec, sessions: int, at: datetime = T0) -> policy.FloorDecision:
    zero_hold = targets.TargetSpec(
        ref=spec.ref, kind=spec.kind, max=spec.max, sessions_per_replica=1, hold=timedelta(0)
    )
    return policy.decide_floor(zero_hold, policy.Signals(sessions=sessions), at, None)


def ref(name: str = "chat", namespace: str = "ml", **metadata: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name=name, namespace=namespace, scalerMetadata=metadata)


class Scaler:
    """A scaler served over a MemoryStore, and a channel with a real stub to it."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.registered: list[targets.TargetSpec] = []
        self.channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> pb_grpc.ExternalScalerStub:
        assert self.channel is not None
        return pb_grpc.ExternalScalerStub(self.channel)  # type: ignore[no-untyped-call]


@pytest.fixture
async def scaler() -> AsyncIterator[Scaler]:
    harness = Scaler()
    options = scaler_main.ScalerOptions(address="127.0.0.1:0", health_interval=0.05)
    async with (
        scaler_main.run_scaler(
            feed=harness.store, specs={"ml/chat": CHAT}, options=options, register=harness.registered.append
        ) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        harness.channel = channel
        yield harness


async def test_get_metric_spec_is_one_metric_of_target_size_one(scaler: Scaler) -> None:
    reply = await scaler.stub.GetMetricSpec(ref())
    assert list(reply.metricSpecs) == [pb.MetricSpec(metricName="prewarm-floor", targetSize=1, targetSizeFloat=1.0)]


@pytest.mark.parametrize("sessions", [0, 1, 4], ids=["zero", "one", "four"])
async def test_get_metrics_and_is_active_agree_with_the_decision(scaler: Scaler, sessions: int) -> None:
    await scaler.store.save_decision(decision(CHAT, sessions))
    metrics = await scaler.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="s0-prewarm-floor"))
    assert list(metrics.metricValues) == [
        pb.MetricValue(metricName="s0-prewarm-floor", metricValue=sessions, metricValueFloat=float(sessions))
    ]
    assert (await scaler.stub.IsActive(ref())).result is (sessions > 0)


async def test_unknown_target_is_not_found(scaler: Scaler) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(name="other")))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "unknown target 'ml/other': not configured"


async def test_bad_metadata_is_invalid_argument_naming_the_key(scaler: Scaler) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.stub.IsActive(ref(hold="soon", max="ten"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "max: 'ten' is not an integer" in details
    assert "hold: 'soon' is not a duration" in details


async def test_keda_connection_keys_are_not_inline_configuration(scaler: Scaler) -> None:
    await scaler.store.save_decision(decision(CHAT, 1))
    keda_keys = {"scalerAddress": "prewarm.prewarm:9090", "unsafeSsl": "false", "caCert": "/certs/ca.pem"}
    assert (await scaler.stub.IsActive(ref(**keda_keys))).result is True
    assert scaler.registered == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.stub.IsActive(ref(name="unconfigured", **keda_keys))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_no_decision_yet_is_unavailable(scaler: Scaler) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.stub.IsActive(ref())
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_scaled_object_alone_configures_a_target(scaler: Scaler) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await scaler.stub.IsActive(ref(name="so", target="ml/sdxl", max="2", sessionsPerReplica="1"))
    assert [(str(s.ref), s.max, s.kind) for s in scaler.registered] == [("ml/sdxl", 2, targets.TargetKind.KEDA)]


async def test_stream_sends_current_state_then_each_change(scaler: Scaler) -> None:
    await scaler.store.save_decision(decision(CHAT, 0))
    stream = scaler.stub.StreamIsActive(ref())
    assert (await stream.read()).result is False
    await scaler.store.save_decision(decision(CHAT, 2, T0 + timedelta(seconds=1)))
    assert (await asyncio.wait_for(stream.read(), 5)).result is True
    await scaler.store.save_decision(decision(CHAT, 3, T0 + timedelta(seconds=2)))  # still active: no push
    await scaler.store.save_decision(decision(CHAT, 0, T0 + timedelta(seconds=3)))
    assert (await asyncio.wait_for(stream.read(), 5)).result is False
    stream.cancel()

    # a client that reconnects gets the current state at once
    await scaler.store.save_decision(decision(CHAT, 1, T0 + timedelta(seconds=4)))
    again = scaler.stub.StreamIsActive(ref())
    assert (await asyncio.wait_for(again.read(), 5)).result is True
    again.cancel()


async def test_many_streams_each_hear_only_their_own_target() -> None:
    specs = {
        f"ml/m{i}": targets.TargetSpec(ref=targets.TargetRef("ml", f"m{i}"), kind=targets.TargetKind.KEDA, max=3)
        for i in range(50)
    }
    store = MemoryStore()
    for spec in specs.values():
        await store.save_decision(decision(spec, 0))
    options = scaler_main.ScalerOptions(address="127.0.0.1:0")
    async with (
        scaler_main.run_scaler(feed=store, specs=specs, options=options) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = pb_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
        streams = [stub.StreamIsActive(ref(name=f"m{i}")) for i in range(50)]
        assert {(await s.read()).result for s in streams} == {False}
        await store.save_decision(decision(specs["ml/m17"], 1, T0 + timedelta(seconds=1)))
        assert (await asyncio.wait_for(streams[17].read(), 5)).result is True
        # another stream got nothing from that change: its next two messages are its own
        # true-then-false, which a stray push queued before them would have shifted
        await store.save_decision(decision(specs["ml/m3"], 2, T0 + timedelta(seconds=2)))
        await store.save_decision(decision(specs["ml/m3"], 0, T0 + timedelta(seconds=3)))
        assert [(await asyncio.wait_for(streams[3].read(), 5)).result for _ in range(2)] == [True, False]
        for s in streams:
            s.cancel()


async def test_an_older_decision_never_replaces_a_newer_one(scaler: Scaler) -> None:
    await scaler.store.save_decision(decision(CHAT, 2, T0 + timedelta(seconds=10)))
    await scaler.store.save_decision(decision(CHAT, 0, T0))
    assert (await scaler.stub.IsActive(ref())).result is True


async def test_health_is_serving(scaler: Scaler) -> None:
    assert scaler.channel is not None
    health = health_pb2_grpc.HealthStub(scaler.channel)
    for service in ("", "externalscaler.ExternalScaler"):
        await wait_for_health(health, service, health_pb2.HealthCheckResponse.SERVING)


async def wait_for_health(health: health_pb2_grpc.HealthStub, service: str, status: int) -> None:
    async def current() -> int:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            return int(reply.status)
        except grpc.aio.AioRpcError:
            return -1

    seen = [await current()]

    async def poll() -> None:
        while seen[-1] != status:
            seen.append(await current())

    await asyncio.wait_for(poll(), 5)


# --- two replicas on one Redis ---


async def test_two_scalers_on_one_redis_agree_and_both_streams_see_an_event(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: keda, max: 4, sessionsPerReplica: 1}]\n")
    grpc_options = scaler_main.ScalerOptions(address="127.0.0.1:0", health_interval=0.05)
    options = composition.ServeOptions(
        config=config, store=redis_server.url, http_host="127.0.0.1", http_port=0, grpc=grpc_options
    )
    feed = RedisStore.from_url(redis_server.url)
    async with composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as serving:
        await wait_for(lambda: "ml/chat" in serving.decider.decisions)
        async with scaler_main.run_scaler(
            feed=feed, specs=serving.decider.specs, options=grpc_options, prime=feed.start
        ) as second:
            ports = [serving.grpc_port, second.port]
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
            try:
                stubs = [pb_grpc.ExternalScalerStub(c) for c in channels]  # type: ignore[no-untyped-call]
                streams = [stub.StreamIsActive(ref()) for stub in stubs]
                assert [(await s.read()).result for s in streams] == [False, False]

                body = (
                    b'{"specversion":"1.0","type":"dev.prewarm.session.opened","source":"/t","id":"1",'
                    b'"data":{"target":"ml/chat","session":"a"}}'
                )
                async with aiohttp.ClientSession() as http:
                    url = f"http://127.0.0.1:{serving.http_port}/"
                    headers = {"Content-Type": "application/cloudevents+json"}
                    async with http.post(url, data=body, headers=headers) as response:
                        assert response.status == 202
                pushed = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 5)
                assert [p.result for p in pushed] == [True, True]

                request = pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="prewarm-floor")
                answers = [await stub.GetMetrics(request) for stub in stubs]
                assert answers[0] == answers[1]
                assert answers[0].metricValues[0].metricValueFloat == 1.0
                for s in streams:
                    s.cancel()
            finally:
                for c in channels:
                    await c.close()
    await feed.close()


async def test_the_cache_re_reads_its_decisions_after_a_gap_in_the_feed(redis_server: RedisServer) -> None:
    """A decision published while the scaler's subscription was down never reaches it: after the
    subscription comes back, every cached decision is read again (as an informer relists)."""
    feed = RedisStore.from_url(redis_server.url)
    writer = RedisStore.from_url(redis_server.url)
    options = scaler_main.ScalerOptions(address="127.0.0.1:0", health_interval=0.05)
    await writer.save_decision(decision(CHAT, 0))
    try:
        async with scaler_main.run_scaler(
            feed=feed, specs={"ml/chat": CHAT}, options=options, prime=feed.start
        ) as running:
            await wait_for(lambda: (d := running.cache.cached("ml/chat")) is not None and d.floor == 0)
            # the first subscription is a gap too: let its re-read finish before writing behind its back
            await wait_for(lambda: running.cache.refreshes >= 1)
            newer = decision(CHAT, 3, T0 + timedelta(minutes=1))
            # stored without an announcement, as if published while nobody listened
            raw = aioredis.Redis.from_url(redis_server.url)
            await raw.set("prewarm:{ml/chat}:decision", encode_decision(newer))
            await raw.aclose()
            assert running.cache.cached("ml/chat") == decision(CHAT, 0)  # nothing told it yet
            refreshed = running.cache.refreshes
            assert redis_server.command(b"CLIENT KILL TYPE pubsub").startswith(b":1")  # the gap
            await wait_for(lambda: running.cache.refreshes > refreshed and running.cache.cached("ml/chat") == newer)
    finally:
        await feed.close()
        await writer.close()


async def test_health_follows_the_store(redis_server: RedisServer) -> None:
    feed = RedisStore.from_url(redis_server.url, timeout=0.2)
    options = scaler_main.ScalerOptions(address="127.0.0.1:0", health_interval=0.05)
    try:
        async with (
            scaler_main.run_scaler(feed=feed, specs={}, options=options, prime=feed.start) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            await wait_for_health(health, "", health_pb2.HealthCheckResponse.SERVING)
            redis_server.stop()
            await wait_for_health(health, "", health_pb2.HealthCheckResponse.NOT_SERVING)
            redis_server.start()
            await wait_for_health(health, "", health_pb2.HealthCheckResponse.SERVING)
    finally:
        await feed.close()


# --- TLS and mTLS ---


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=prewarm-test-ca",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        )
    return {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


async def test_mtls_requires_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    options = scaler_main.ScalerOptions(
        address="127.0.0.1:0", tls_cert=pki["server.pem"], tls_key=pki["server.key"], tls_client_ca=pki["ca.pem"]
    )
    store = MemoryStore()
    await store.save_decision(decision(CHAT, 2))
    async with scaler_main.run_scaler(feed=store, specs={"ml/chat": CHAT}, options=options) as running:
        target = f"127.0.0.1:{running.port}"
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki["ca.pem"].read_bytes(),
            private_key=pki["client.key"].read_bytes(),
            certificate_chain=pki["client.pem"].read_bytes(),
        )
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            stub = pb_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            assert (await stub.IsActive(ref())).result is True
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes())
        async with grpc.aio.secure_channel(target, without_cert) as channel:
            stub = pb_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.IsActive(ref(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_tls_options_name_every_problem(tmp_path: Path) -> None:
    options = scaler_main.ScalerOptions(tls_cert=tmp_path / "absent.pem", tls_client_ca=tmp_path / "ca.pem")
    with pytest.raises(targets.ConfigError) as caught:
        scaler_main.read_tls(options)
    assert [p.key for p in caught.value.problems] == ["--grpc-key", "--grpc-cert", "--grpc-client-ca"]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    from scaler import generate_stubs

    generate_stubs.generate(tmp_path)
    package = Path(generate_stubs.__file__).parent
    for name in ("externalscaler_pb2.py", "externalscaler_pb2.pyi", "externalscaler_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (package / name).read_text(), f"{name} is stale: regenerate"


async def test_repeated_polls_resolve_the_metadata_once(scaler: Scaler, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    await scaler.store.save_decision(decision(CHAT, 1))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert (await scaler.stub.IsActive(ref(sesionTTL="1m"))).result is True
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scaler.stub.IsActive(ref(max="ten"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # a cached refusal is still a refusal
    typo = [r for r in caplog.records if "unknown scalerMetadata key 'sesionTTL'" in r.getMessage()]
    assert len(typo) == 1


class LaggingFeed:
    """A store whose new decision can be read before its announcement arrives (pub/sub lag)."""

    def __init__(self) -> None:
        self.stored: policy.FloorDecision | None = None
        self.listeners: list[Callable[[policy.FloorDecision], None]] = []

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        return self.stored

    def add_decision_listener(self, listener: Callable[[policy.FloorDecision], None]) -> None:
        self.listeners.append(listener)

    def add_resync_listener(self, listener: Callable[[], None]) -> None:
        return None  # this feed never misses an announcement

    async def ping(self) -> None:
        return None

    def announce(self, decision: policy.FloorDecision) -> None:
        self.stored = decision
        for listener in self.listeners:
            listener(decision)


async def test_a_stream_pushes_changes_only_when_its_own_read_fills_the_cache() -> None:
    feed = LaggingFeed()
    options = scaler_main.ScalerOptions(address="127.0.0.1:0", health_interval=0.05)
    async with (
        scaler_main.run_scaler(feed=feed, specs={"ml/chat": CHAT}, options=options) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        feed.stored = decision(CHAT, 0)  # decided and stored; the announcement is still on its way
        stub = pb_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
        stream = stub.StreamIsActive(ref())
        assert (await stream.read()).result is False  # read from the store: fills the cache
        feed.announce(decision(CHAT, 0))  # the late announcement of the same state
        feed.announce(decision(CHAT, 1, T0 + timedelta(seconds=1)))
        pushed = await asyncio.wait_for(stream.read(), 5)
        assert pushed.result is True  # the change, not a repeat of the state already sent
        stream.cancel()
