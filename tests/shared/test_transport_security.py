"""Transport security of ``shared.grpc_util``: real gRPC servers on loopback with TLS (a CA and
certificates generated here), mutual TLS, the bearer token on every RPC, health checks without it,
and metrics bound to ``security.metrics_host``."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from looptool.shared.config import ConfigError, SecuritySettings, load_config
from looptool.shared.grpc_util import RunningServer, channel, start_server, wait_healthy

from support.net import free_port

METHOD = "/looptool.test.Echo/Say"
TOKEN = "s3cr3t-token-for-tests"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(dir_: Path, name: str, cert: x509.Certificate, key) -> tuple[str, str]:
    c, k = dir_ / f"{name}.crt", dir_ / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(c), str(k)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A CA, a server/client certificate it signed, and a client certificate from another CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("looptool-test-ca", ca_key, _name("looptool-test-ca"), ca_key, ca=True)
    rogue_ca = _cert("rogue-ca", rogue_key, _name("rogue-ca"), rogue_key, ca=True)
    leaf_key, stranger_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    out: dict[str, str] = {}
    out["ca"], _ = _write(d, "ca", ca, ca_key)
    out["cert"], out["key"] = _write(d, "leaf", _cert("looptool", leaf_key, ca.subject, ca_key), leaf_key)
    out["stranger_cert"], out["stranger_key"] = _write(d, "stranger", _cert("stranger", stranger_key, rogue_ca.subject, rogue_key), stranger_key)
    token = d / "token"
    token.write_text(TOKEN + "\n")  # a trailing newline (as `kubectl create secret --from-file` keeps it) is ignored
    out["token"] = str(token)
    wrong = d / "wrong-token"
    wrong.write_text("not-the-token")
    out["wrong_token"] = str(wrong)
    return out


def _register(server: grpc.Server) -> list[str]:
    say = grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"echo:" + req)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("looptool.test.Echo", {"Say": say})])
    return ["looptool.test.Echo"]


@pytest.fixture
def serve() -> Iterator:
    running: list[RunningServer] = []

    def start(security: SecuritySettings | None, metrics_port: int = 0) -> RunningServer:
        r = start_server("sectest", _register, port=0, metrics_port=metrics_port, security=security)
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop(0)


def say(address: str, security: SecuritySettings | None) -> bytes:
    with channel(address, security) as ch:
        return ch.unary_unary(METHOD)(b"hi", timeout=10)


def health(address: str, security: SecuritySettings | None) -> int:
    with channel(address, security) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status  # type: ignore[attr-defined]


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_tls_server_serves_a_client_that_trusts_its_ca(serve, pki):
    server_sec = SecuritySettings(tls_cert_file=pki["cert"], tls_key_file=pki["key"])
    srv = serve(server_sec)
    client = SecuritySettings(tls_ca_file=pki["ca"])
    assert say(srv.address, client) == b"echo:hi"
    wait_healthy(srv.address, timeout=10, security=client)
    # a plaintext client cannot talk to a TLS server
    assert code_of(lambda: say(srv.address, None)) == grpc.StatusCode.UNAVAILABLE
    # nor a TLS client that does not trust the server's CA
    assert code_of(lambda: say(srv.address, SecuritySettings(tls_ca_file=pki["stranger_cert"]))) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_rejects_a_client_without_a_trusted_certificate(serve, pki):
    srv = serve(SecuritySettings(tls_cert_file=pki["cert"], tls_key_file=pki["key"], tls_ca_file=pki["ca"], require_client_cert=True))
    with_cert = SecuritySettings(tls_cert_file=pki["cert"], tls_key_file=pki["key"], tls_ca_file=pki["ca"])
    assert say(srv.address, with_cert) == b"echo:hi"
    no_cert = SecuritySettings(tls_ca_file=pki["ca"])
    assert code_of(lambda: say(srv.address, no_cert)) == grpc.StatusCode.UNAVAILABLE
    stranger = SecuritySettings(tls_cert_file=pki["stranger_cert"], tls_key_file=pki["stranger_key"], tls_ca_file=pki["ca"])
    assert code_of(lambda: say(srv.address, stranger)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_token_is_required_on_every_rpc_but_health(serve, pki, tls):
    files = {"tls_cert_file": pki["cert"], "tls_key_file": pki["key"], "tls_ca_file": pki["ca"]} if tls else {}
    srv = serve(SecuritySettings(token_file=pki["token"], **files))
    good = SecuritySettings(token_file=pki["token"], **files)
    assert say(srv.address, good) == b"echo:hi"

    missing = SecuritySettings(**files)
    with pytest.raises(grpc.RpcError) as err:
        say(srv.address, missing)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "no bearer token" in err.value.details()
    wrong = SecuritySettings(token_file=pki["wrong_token"], **files)
    with pytest.raises(grpc.RpcError) as err:
        say(srv.address, wrong)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "wrong bearer token" in err.value.details()
    assert TOKEN not in err.value.details()

    # probes and load balancers check health without the token
    assert health(srv.address, missing) == health_pb2.HealthCheckResponse.SERVING
    wait_healthy(srv.address, timeout=10, security=missing)


def test_bad_security_settings_fail_before_binding_with_one_line(serve, pki, tmp_path):
    with pytest.raises(ConfigError, match=r"security\.tls_key_file: cannot read"):
        serve(SecuritySettings(tls_cert_file=pki["cert"], tls_key_file=str(tmp_path / "missing.key")))
    with pytest.raises(ConfigError, match="set both"):
        serve(SecuritySettings(tls_cert_file=pki["cert"]))
    with pytest.raises(ConfigError, match="require_client_cert: needs"):
        serve(SecuritySettings(tls_cert_file=pki["cert"], tls_key_file=pki["key"], require_client_cert=True))
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"security\.token_file: .* is empty"):
        serve(SecuritySettings(token_file=str(empty)))


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_metrics_bind_to_loopback_by_default(serve):
    assert load_config(environ={}).security.metrics_host == "127.0.0.1"
    port = free_port()
    serve(SecuritySettings(), metrics_port=port)
    assert _listening("127.0.0.1", port)
    ip = _non_loopback_ip()
    if ip is not None:  # a host with another interface: metrics must not be reachable on it
        assert not _listening(ip, port)


def test_balanced_target_spreads_over_replicas_with_tls_and_token(pki):
    """Sharded stages open one round_robin channel over a headless Service's addresses; with TLS
    and a token configured the channel must still balance (not fall back to one replica)."""
    from looptool.shared.loop.sharding import open_channel

    hits: list[str] = []
    servers: list[RunningServer] = []

    def register_as(name: str):
        def reg(server: grpc.Server) -> list[str]:
            def handle(req, ctx):
                hits.append(name)
                return b"ok"

            h = grpc.unary_unary_rpc_method_handler(handle)
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("looptool.test.Echo", {"Say": h})])
            return ["looptool.test.Echo"]

        return reg

    sec = SecuritySettings(tls_cert_file=pki["cert"], tls_key_file=pki["key"], tls_ca_file=pki["ca"], token_file=pki["token"])
    try:
        for name in ("a", "b"):
            servers.append(start_server("sectest", register_as(name), port=0, security=sec))
        target = "ipv4:" + ",".join(s.address for s in servers)
        # an ipv4: list has no single host name to check the certificate against
        client = sec.model_copy(update={"tls_server_name": "localhost"})
        with open_channel(target, client) as ch:
            for _ in range(20):
                assert ch.unary_unary(METHOD)(b"hi", timeout=10) == b"ok"
    finally:
        for s in servers:
            s.stop(0)
    assert set(hits) == {"a", "b"}, hits
