"""Mutual TLS for the authorization tests: a test CA, workload certificates with SPIFFE IDs, an
Envoy listener set up like an Istio sidecar's inbound HTTP listener, and a TLS client that can
present a certificate, send SNI and connect from another loopback address.

Istio learns who is calling from the peer certificate of an mTLS connection (`source.principal`,
`source.namespace`, `principals`) and where they call from from the connection's addresses
(`source.ip`, `ipBlocks`); a policy test needs both, made here with `cryptography`, independently
of the project."""

from __future__ import annotations

import copy
import datetime
import http.client
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import LOOPBACK, REQUEST_TIMEOUT_S, HeaderArg, Response, send_request

TRUST_DOMAIN = "cluster.local"
# A client certificate signed by the test CA whose only SAN is a DNS name: a workload outside the
# mesh's identity scheme (a legacy client with a certificate from the same CA).
NO_URI_SAN = "no-uri-san"
LEGACY_DNS_NAME = "legacy-client.example.com"

# The cipher suites an Istio sidecar offers inbound (pilot/pkg/security/authn/utils/utils.go,
# SupportedCiphers); TLS 1.2 to 1.3 as BuildInboundTLS sets them.
ISTIO_CIPHERS = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
]


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """The identity Istio's CA gives a pod running as `service_account` in `namespace`."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class ClientCert:
    """A workload certificate on disk. `identity`: its URI SAN, or `NO_URI_SAN`."""

    identity: str
    cert_path: Path
    key_path: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class TestCA:
    """A root CA in `directory` that issues the server certificate (127.0.0.1, localhost) and
    client certificates on demand, one per identity, cached for the run. EC P-256 keys: fast to
    make, and what Istio's CA issues by default is equally usable by Envoy."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._clients: dict[str, ClientCert] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        now = datetime.datetime.now(datetime.timezone.utc)
        self._not_before = now - datetime.timedelta(hours=1)
        self._not_after = now + datetime.timedelta(days=2)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mesh-oauth tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "mesh-oauth test root CA")])
        self._name = name
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert_path, self.server_key_path = self._issue(
            "server", [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")],
            ExtendedKeyUsageOID.SERVER_AUTH)

    def _issue(self, stem: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            # Istio workload certificates have an empty subject; ours names the file for humans.
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem[:64])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        cert_path, key_path = self.directory / f"{safe}.pem", self.directory / f"{safe}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path

    def client(self, identity: str) -> ClientCert:
        """The client certificate for a SPIFFE ID (its only SAN, a URI), or for `NO_URI_SAN` one
        whose only SAN is the DNS name `LEGACY_DNS_NAME`. Made once per identity."""
        with self._lock:
            cached = self._clients.get(identity)
            if cached is None:
                if identity == NO_URI_SAN:
                    sans: list[x509.GeneralName] = [x509.DNSName(LEGACY_DNS_NAME)]
                else:
                    sans = [x509.UniformResourceIdentifier(identity)]
                cert_path, key_path = self._issue(f"client-{len(self._clients)}-{identity}", sans,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH)
                cached = self._clients[identity] = ClientCert(identity, cert_path, key_path)
            return cached

    def client_context(self, identity: str | None) -> ssl.SSLContext:
        """A client TLS context that trusts only the test CA (the server certificate is checked;
        the host name is not, as requests may send any SNI) and presents the certificate for
        `identity`, or none."""
        key = identity or ""
        with self._lock:
            context = self._contexts.get(key)
        if context is not None:
            return context
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.ca_path))
        context.set_alpn_protocols(["http/1.1"])
        if identity is not None:
            cert = self.client(identity)
            context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
        with self._lock:
            return self._contexts.setdefault(key, context)


# --------------------------------------------------------------------------- the listener


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    for entry in listener["filter_chains"][0]["filters"]:
        if entry["name"] == "envoy.filters.network.http_connection_manager":
            return entry["typed_config"]
    raise ValueError("bootstrap has no http_connection_manager")


def sidecar_inbound(
    config: Mapping[str, Any],
    ca: TestCA,
    port: int = 0,
    extra_ports: Sequence[int] = (),
    trust_domains: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A copy of a `harness.bootstrap(...)` whose listener is a sidecar's inbound HTTP filter
    chain in PERMISSIVE mode, served over TLS so that one listener carries both kinds of Istio
    traffic: a request with a client certificate is mTLS traffic (the peer's SPIFFE ID is its
    principal), one without is what a plaintext request is in Istio, a request with no peer
    principal. The listener is on `port` (0: the kernel's choice), and on `extra_ports` too (a
    workload with several service ports, for `ports` and `destination.port`).

    The TLS context follows pilot/pkg/security/authn/utils/utils.go (BuildInboundTLS) and
    pilot/pkg/security/model/authentication.go (ApplyToCommonTLSContext): ALPN h2 and http/1.1,
    TLS 1.2–1.3 with Istio's cipher list, client certificates verified against the root CA. Two
    departures, both because one TLS chain stands for Istio's two (mTLS, plaintext):
    `require_client_certificate` is false, and by default there is no SAN check. Istio also
    requires a SAN starting with `spiffe://<trust domain>/` for the domains of
    pilot/pkg/networking/plugin/authn/util.go (TrustDomainsForValidation, `cluster.local`), so a
    sidecar refuses a certificate of another trust domain or without a SPIFFE ID in the handshake;
    but Envoy enforces SAN matchers by requiring a certificate (measured: "peer did not provide
    required client certificate"), which would leave no way in without one. So here such a
    certificate connects, as it would with PILOT_SKIP_VALIDATE_TRUST_DOMAIN=true, and the tests
    see how the RBAC matchers treat it. `trust_domains`: add the SAN check (and so require a
    client certificate).

    The HTTP connection manager gets what pilot/pkg/networking/core/listener_inbound.go
    (buildSidecarInboundHTTPOpts), listener_builder.go (buildHTTPConnectionManager) and
    pilot/pkg/networking/util/proxy_headers.go give a sidecar's inbound listener by default:
    - `use_remote_address: false` and no `xff_num_trusted_hops` (0): Envoy takes the client
      address from the right-most `x-forwarded-for` entry when there is one (Istio's
      `remote.ip`/`remoteIpBlocks`); `source.ip`/`ipBlocks` stay the connection's peer address;
    - `forward_client_cert_details: APPEND_FORWARD` with `set_current_client_cert_details`
      subject, URI and DNS: the upstream sees the caller's identity in `x-forwarded-client-cert`;
    - `normalize_path: true` (mesh `pathNormalization` DEFAULT = BASE), `merge_slashes` left
      false, `path_with_escaped_slashes_action: KEEP_UNCHANGED`;
    - `codec_type: AUTO`, `server_name: istio-envoy` (OVERWRITE), websocket upgrades,
      `stream_idle_timeout: 0s`.
    The listener has the TLS inspector, which a sidecar's virtual inbound listener runs, so that
    `connection.sni` (requested_server_name) is known."""
    result = copy.deepcopy(dict(config))
    listener = result["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = port
    if extra_ports:
        listener["additional_addresses"] = [
            {"address": {"socket_address": {"address": LOOPBACK, "port_value": p}}} for p in extra_ports
        ]
    listener["listener_filters"] = [{
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
    }]
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(ca.ca_path)}}
    if trust_domains:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"prefix": f"spiffe://{domain}/"}} for domain in trust_domains
        ]
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": False,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                    "cipher_suites": ISTIO_CIPHERS,
                },
                "tls_certificates": [{
                    "certificate_chain": {"filename": str(ca.server_cert_path)},
                    "private_key": {"filename": str(ca.server_key_path)},
                }],
                "validation_context": validation,
            },
        },
    }
    hcm = _hcm(result)
    hcm.update({
        "codec_type": "AUTO",
        "use_remote_address": False,
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
        "server_name": "istio-envoy",
        "server_header_transformation": "OVERWRITE",
        "normalize_path": True,
        "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
    })
    hcm.pop("xff_num_trusted_hops", None)
    return result


# --------------------------------------------------------------------------- the client


class _TlsConnection(http.client.HTTPConnection):
    """HTTPSConnection's job with our own choice of SNI (none for None) and a bound source."""

    def __init__(self, port: int, context: ssl.SSLContext, sni: str | None,
                 source_address: str | None, timeout: float) -> None:
        super().__init__(LOOPBACK, port, timeout=timeout,
                         source_address=(source_address, 0) if source_address else None)
        self._context = context
        self._sni = sni

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._sni)


# What a refused handshake looks like to the client: an alert read as an SSL error, or the
# connection closed before an answer.
TLS_REFUSALS = (ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


def https_request(
    port: int,
    path: str = "/",
    *,
    ca: TestCA,
    identity: str | None = None,
    source_address: str | None = None,
    sni: str | None = None,
    method: str = "GET",
    headers: HeaderArg = None,
    query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Response:
    """One HTTP/1.1 request over TLS to Envoy on 127.0.0.1:`port`, like `harness.http_request`.
    `identity`: present the client certificate for this SPIFFE ID (or `NO_URI_SAN`); None, no
    certificate. `source_address`: connect from this loopback address (127.0.0.2, …), so Envoy
    sees it as the peer address. `sni`: the server name sent in the ClientHello (None: none, as
    for an IP literal). A handshake Envoy refuses raises one of `TLS_REFUSALS`."""
    conn = _TlsConnection(port, ca.client_context(identity), sni, source_address, timeout)
    return send_request(conn, method, path, headers, query, body)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago, for listeners whose ports must
    be known before Envoy starts (a policy names them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
