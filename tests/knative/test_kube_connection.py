"""Connection settings taken from a kubernetes.client.Configuration: an HTTPS API server (the fake,
with a certificate made here for `kube.test` only, requiring a client certificate) reached with
the CA from a file or from data, the client certificate, the TLS server name, the bearer token, or
no verification at all; a kubeconfig read by the official loader; refreshed tokens."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kube_api_server import KubeAPIServer
from kubernetes import client as k8s
from support import free_port

from knative import kube_api, kube_connection
from prewarm.service import knative_targets

NOW = datetime.datetime.now(datetime.UTC)  # certificates are valid from an hour before the run to a day after
TOKEN = "Bearer t0ken"


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None = None,
    dns: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_cert.subject if signer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        usages = {"key_cert_sign": True, "crl_sign": True, "digital_signature": True}
    else:
        usages = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usages,
        ),
        critical=True,
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for `kube.test` (not 127.0.0.1), a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("test cluster CA", ca_key, issuer=None)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "kube-apiserver", server_key, issuer=(ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH, dns="kube.test"
    )
    client = _issue(
        "system:serviceaccount:prewarm:prewarm", client_key, issuer=(ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return Pki(
        ca=_write(directory / "ca.crt", ca),
        server_cert=_write(directory / "server.crt", server, server_key),
        server_key=directory / "server.key",
        client_cert=_write(directory / "client.crt", client, client_key),
        client_key=directory / "client.key",
    )


@dataclasses.dataclass
class HttpsServer:
    url: str
    authorizations: list[str | None]


@pytest.fixture
async def https(pki: Pki) -> AsyncIterator[HttpsServer]:
    """The fake API server over TLS, requiring a client certificate signed by the CA; it records
    each request's Authorization header."""
    fake = KubeAPIServer()
    fake.namespaces["knative-serving"] = {
        "metadata": {"name": "knative-serving", "labels": {"app.kubernetes.io/version": "1.23.0"}}
    }
    seen: list[str | None] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        seen.append(request.headers.get("Authorization"))
        return await handler(request)

    fake.app.middlewares.append(record)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    tls.verify_mode = ssl.CERT_REQUIRED
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield HttpsServer(f"https://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()


def configuration(url: str, **settings: Any) -> k8s.Configuration:
    config = k8s.Configuration(host=url)
    for name, value in settings.items():
        setattr(config, name, value)
    return config


async def labels_through(config: k8s.Configuration) -> dict[str, str]:
    session = kube_connection.open_session(config)
    try:
        return await kube_api.KubeAPI(config, session, timeout=5).namespace_labels("knative-serving")
    finally:
        await session.close()


def client_certificate(pki: Pki) -> dict[str, Any]:
    return {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key), "tls_server_name": "kube.test"}


@pytest.mark.parametrize("ca_from", ["file", "data"])
async def test_tls_with_the_ca_client_certificate_server_name_and_token_of_a_configuration(
    https: HttpsServer, pki: Pki, ca_from: str
) -> None:
    ca = {"ssl_ca_cert": str(pki.ca)} if ca_from == "file" else {"ca_cert_data": pki.ca.read_text()}
    config = configuration(https.url, api_key={"BearerToken": TOKEN}, **ca, **client_certificate(pki))
    assert await labels_through(config) == {"app.kubernetes.io/version": "1.23.0"}
    assert https.authorizations == [TOKEN]


@pytest.mark.parametrize(
    ("leave_out", "why"),
    [
        ("ssl_ca_cert", "self-signed certificate in certificate chain"),  # the system's CAs do not know it
        ("tls_server_name", "IP address mismatch"),  # the certificate names kube.test, not 127.0.0.1
        ("cert_file", ""),  # the server requires a client certificate (how the handshake ends varies)
    ],
    ids=["no-ca", "no-server-name", "no-client-certificate"],
)
async def test_tls_settings_left_out_fail_with_status_0(https: HttpsServer, pki: Pki, leave_out: str, why: str) -> None:
    settings = {"ssl_ca_cert": str(pki.ca), **client_certificate(pki)}
    del settings[leave_out]
    if leave_out == "cert_file":
        del settings["key_file"]
    with pytest.raises(kube_api.KubeAPIError) as failed:
        await labels_through(configuration(https.url, **settings))
    assert failed.value.status == 0 and failed.value.transient
    assert why in failed.value.message
    assert https.authorizations == []  # no request got through


async def test_insecure_skip_tls_verify_checks_neither_ca_nor_name(https: HttpsServer, pki: Pki) -> None:
    config = configuration(https.url, verify_ssl=False, cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert await labels_through(config) == {"app.kubernetes.io/version": "1.23.0"}
    assert https.authorizations == [None]


async def test_a_kubeconfig_read_by_the_official_loader(https: HttpsServer, pki: Pki, tmp_path: Path) -> None:
    def data(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {
                            "server": https.url,
                            "certificate-authority-data": data(pki.ca),
                            "tls-server-name": "kube.test",
                        },
                    }
                ],
                "users": [
                    {
                        "name": "prewarm",
                        "user": {
                            "token": TOKEN.split()[1],
                            "client-certificate-data": data(pki.client_cert),
                            "client-key-data": data(pki.client_key),
                        },
                    }
                ],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "prewarm"}}],
                "current-context": "test",
            }
        )
    )
    config = knative_targets.load_kube_configuration(kubeconfig)
    assert await labels_through(config) == {"app.kubernetes.io/version": "1.23.0"}
    assert https.authorizations == [TOKEN]


def test_the_endpoint_of_a_configuration() -> None:
    config = configuration(
        "https://10.0.0.1:6443/", tls_server_name="kubernetes.default.svc", proxy="http://proxy:3128"
    )
    assert kube_connection.endpoint_of(config) == kube_connection.Endpoint(
        base_url="https://10.0.0.1:6443", proxy="http://proxy:3128", server_hostname="kubernetes.default.svc"
    )


class Refreshing:
    """A loader's refresh hook: each run sets the next token, as an expired one would be replaced;
    with `wait`, a run blocks until it is set (an exec plugin that takes its time)."""

    def __init__(self, *, wait: threading.Event | None = None) -> None:
        self.runs = 0
        self._wait = wait

    def __call__(self, config: k8s.Configuration) -> None:
        self.runs += 1
        if self._wait is not None:
            self._wait.wait(timeout=30)
        config.api_key["BearerToken"] = f"Bearer token-{self.runs}"


async def test_a_refresh_hook_runs_at_most_once_per_period_and_once_for_calls_at_the_same_time() -> None:
    hook = Refreshing()
    config = configuration("https://kube.test", refresh_api_key_hook=hook)
    now = [100.0]
    credentials = kube_connection.Credentials(config, refresh_every=10.0, monotonic=lambda: now[0])
    headers = await asyncio.gather(*(credentials.authorization() for _ in range(20)))
    assert (set(headers), hook.runs) == ({"Bearer token-1"}, 1)
    now[0] += 9.9
    assert (await credentials.authorization(), hook.runs) == ("Bearer token-1", 1)
    now[0] += 0.1
    assert (await credentials.authorization(), hook.runs) == ("Bearer token-2", 2)


async def test_a_hook_that_hangs_runs_once_however_many_calls_give_up_on_it() -> None:
    """An exec plugin that does not return: calls time out, no second run piles up behind it, and
    its token is used once it returns."""
    go = threading.Event()
    hook = Refreshing(wait=go)
    credentials = kube_connection.Credentials(configuration("https://kube.test", refresh_api_key_hook=hook))
    for _ in range(20):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(credentials.authorization(), 0.01)
    assert hook.runs == 1
    go.set()
    assert await asyncio.wait_for(credentials.authorization(), 5) == "Bearer token-1"
    assert hook.runs == 1


async def test_a_failing_hook_is_status_0_and_run_again_on_the_next_call() -> None:
    def broken(config: k8s.Configuration) -> None:
        raise OSError("exec plugin exited 1")

    config = configuration("http://127.0.0.1:1", refresh_api_key_hook=broken)
    session = kube_connection.open_session(config)
    try:
        api = kube_api.KubeAPI(config, session, timeout=5)
        for _ in range(2):
            with pytest.raises(kube_api.KubeAPIError) as failed:
                await api.namespace_labels("knative-serving")
            assert (failed.value.status, failed.value.message) == (
                0,
                "refreshing the API credentials: OSError: exec plugin exited 1",
            )
    finally:
        await session.close()


async def test_the_refreshed_token_is_sent(https: HttpsServer, pki: Pki) -> None:
    hook = Refreshing()
    config = configuration(
        https.url,
        ssl_ca_cert=str(pki.ca),
        refresh_api_key_hook=hook,
        api_key={"BearerToken": "Bearer stale"},
        **client_certificate(pki),
    )
    assert await labels_through(config) == {"app.kubernetes.io/version": "1.23.0"}
    assert (https.authorizations, hook.runs) == (["Bearer token-1"], 1)


async def test_no_token_sends_no_authorization() -> None:
    assert await kube_connection.Credentials(configuration("http://127.0.0.1:1")).authorization() is None
