#!/usr/bin/env python3
"""`make soak`: a bounded soak and leak run (issue 17). Not part of `make test`; loopback only.

One Envoy (`--concurrency 2`) runs dist/mesh_oauth.wasm, delivered through ECDS, against a real
IdP (tests/integration/harness.py) for `--minutes` (default 10) of mixed load (repeated, unique,
invalid, expired, missing, revoked and DPoP tokens) while, at the same time:
  - the signing key rotates every 30 s (new kid published, the previous key kept one period then
    removed; new tokens are signed with the new key, so the first of them meet an unknown kid),
  - the IdP answers 500 to 20 % of key-set fetches, at random,
  - a configuration push (ECDS) every 20 s alternates two equivalent configurations (the realm),
  - the revocation list changes every 15 s (one subject revoked, then the other).

DPoP (RFC 9449, `dpop.mode: allowed`, so plain bearer tokens of the other kinds still pass): a
token bound to a client key (`cnf.jkt`) with a fresh proof per request must pass; a proof
already answered 200 sent again (a replay, within its window), a proof signed by another key
than `cnf.jkt`, and the bound token sent as `Bearer` must be refused.

Every answer is judged. Wrong answers: a valid token refused (any 4xx; the only refusal
tolerated is the documented 503 + Retry-After, e.g. an unknown kid while the key fetch fails),
or an invalid, expired, revoked, replayed, wrongly bound or downgraded token allowed. Any 5xx
other than 503 + Retry-After is unexpected. Envoy's RSS and the plugin's gauges
(`mesh_oauth.cached_tokens`, `mesh_oauth.held_requests`) are sampled; the gauges must stay
within their limits (`limits.maxCachedTokens`, `limits.maxHeldRequests`, per worker). Prints a
summary, writes bench/results/soak.md, exits 1 on any wrong answer, unexpected 5xx, crash, or a
gauge over its bound.

Tokens and proofs are minted by PyJWT/cryptography (tests/integration/tokens.py), never by the
project."""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import json
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import (  # noqa: E402
    LOOPBACK, EchoServer, Envoy, EnvoyFactory, IdpServer, Reply, locate_envoy,
)
from tokens import SigningKey, b64url, generate_key  # noqa: E402

import jwt  # noqa: E402

MODULE = REPO / "dist" / "mesh_oauth.wasm"
RESULTS = REPO / "bench" / "results"

ALG = "ES256"  # the cheapest asymmetric key for Python to sign with: more unique tokens per second
AUDIENCE = "api"
PROVIDER = "soak"
CONCURRENCY = 2
CLIENT_THREADS = 4

ROTATE_EVERY_S = 30.0
PUSH_EVERY_S = 20.0
REVOKE_EVERY_S = 15.0
JWKS_FAILURE_RATE = 0.20
REVOCATION_PATH = "/revoked.json"
REVOKED_SUBJECTS = ("revoked-a", "revoked-b")

JWKS_CACHE_S = 10
JWKS_MIN_REFETCH_S = 1
REVOCATION_REFRESH_S = 5
# A list change is in force within one refresh (80-100 % of it), the fetch, and every worker's
# next tick; a few seconds spare for a loaded 2-core machine.
REVOCATION_GRACE_S = REVOCATION_REFRESH_S + 3.0
# No grace after a rotation: a token with a kid not yet learnt is held for a refetch, and when
# the last fetch failed it is answered 503 + Retry-After (documented), never 401. A 401 for a
# valid token is wrong at any time.

# DPoP (RFC 9449). `allowed`: a token with `cnf.jkt` needs a proof, a token without `cnf` may
# still be a bearer token (the other kinds of the mix). No `origins`: the proof's `htu` names
# the request's own origin, http://127.0.0.1:<port>.
DPOP_MODE = "allowed"
DPOP_MAX_AGE_S = 60  # the default; a proof is remembered for this + clockSkewSeconds (60)
DPOP_WINDOW_S = DPOP_MAX_AGE_S + 60
# Replays reuse a proof answered 200 at most this long ago: well inside its window, so only
# the replay memory (not `iat`) can refuse it.
REPLAY_WITHIN_S = 20.0
# The replay memory is fixed-size (maxDpopProofs / 16 slots of 16 entries, an entry freed when
# its window ends). 65536 remembers more proofs than a 10-minute run sends in all (~130 req/s ×
# 12 % DPoP ≈ 10k), let alone within one 120 s window, so no slot fills (that would be 503).
MAX_DPOP_PROOFS = 65536
DPOP_SLOT_ENTRIES = 16
# The verified-token cache, per worker: small, so that unique tokens (~15 new ones a second per
# worker) reach the bound well within a push period.
MAX_CACHED_TOKENS = 128
MAX_HELD_REQUESTS = 1024  # the default, set explicitly for the bound check
CACHED_TOKENS_STAT = "wasmcustom.mesh_oauth.cached_tokens"
HELD_REQUESTS_STAT = "wasmcustom.mesh_oauth.held_requests"
RSS_SAMPLE_EVERY_S = 2.0
RSS_FLAT_WITHIN = 0.10


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- the IdP


class FlakyIdp(IdpServer):
    """The harness IdP, with a random 500 for a share of key-set fetches (the harness has one
    reply per path; the failure has to be decided per request)."""

    def __init__(self, failure_rate: float) -> None:
        self.failure_rate = failure_rate
        self.jwks_failures = 0
        self._rng = random.Random()
        super().__init__()

    def _record(self, path: str, target: str = "") -> Reply | None:
        reply = super()._record(path, target)
        if path == self.JWKS_PATH and self._rng.random() < self.failure_rate:
            with self._lock:
                self.jwks_failures += 1
            return Reply(status=500, body=b'{"error":"soak: injected failure"}')
        return reply


class KeyRing:
    """The IdP's signing keys: the current one signs, the previous one stays published for one
    period (tokens in flight), older ones are removed."""

    def __init__(self, idp: IdpServer) -> None:
        self.idp = idp
        self.lock = threading.Lock()
        self.generation = 0
        self.current: SigningKey = generate_key(ALG, kid=f"soak-{self.generation}")
        self.previous: SigningKey | None = None
        self.rotated_at = 0.0  # monotonic; 0: the first key is not a rotation
        self.publish()

    def publish(self) -> None:
        keys = [k.public_jwk for k in (self.current, self.previous) if k is not None]
        self.idp.set_jwks({"keys": keys})

    def rotate(self) -> None:
        fresh = generate_key(ALG, kid=f"soak-{self.generation + 1}")
        with self.lock:
            self.generation += 1
            self.previous, self.current = self.current, fresh
            self.rotated_at = time.monotonic()
            self.publish()  # publish first: no token with the new kid exists yet

    def snapshot(self) -> tuple[SigningKey, float]:
        with self.lock:
            return self.current, self.rotated_at


class RevocationList:
    """The list served at REVOCATION_PATH: one of REVOKED_SUBJECTS at a time, alternating."""

    def __init__(self, idp: IdpServer) -> None:
        self.idp = idp
        self.lock = threading.Lock()
        self.index = 0
        self.changed_at = 0.0
        self.changes = 0
        self.idp.set_json(REVOCATION_PATH, {"subjects": [REVOKED_SUBJECTS[0]]})

    def change(self) -> None:
        with self.lock:
            self.index = 1 - self.index
            self.changed_at = time.monotonic()
            self.changes += 1
            self.idp.set_json(REVOCATION_PATH, {"subjects": [REVOKED_SUBJECTS[self.index]]})

    def snapshot(self) -> tuple[str, float]:
        with self.lock:
            return REVOKED_SUBJECTS[self.index], self.changed_at


# --------------------------------------------------------------------------- configuration


def plugin_config(idp: IdpServer, realm: str) -> dict[str, Any]:
    return {
        "realm": realm,  # the only difference between the two pushed configurations
        "providers": [{
            "name": PROVIDER,
            "issuer": idp.url,
            "audiences": [AUDIENCE],
            "jwksUri": idp.jwks_uri,
            "jwksCacheSeconds": JWKS_CACHE_S,
            "jwksMinRefetchSeconds": JWKS_MIN_REFETCH_S,
            "timeout": "2s",
            "revocationUri": idp.url + REVOCATION_PATH,
            "revocationRefreshSeconds": REVOCATION_REFRESH_S,
            "algorithms": [ALG],
            "dpop": {"mode": DPOP_MODE, "algorithms": [ALG], "maxAgeSeconds": DPOP_MAX_AGE_S},
        }],
        "limits": {"maxCachedTokens": MAX_CACHED_TOKENS, "maxHeldRequests": MAX_HELD_REQUESTS,
                   "maxDpopProofs": MAX_DPOP_PROOFS},
    }


# --------------------------------------------------------------------------- tokens


def mint(key: SigningKey, issuer: str, sub: str, lifetime: int = 3600, **extra: Any) -> str:
    now = int(time.time())
    body = {"iss": issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + lifetime,
            "jti": uuid.uuid4().hex, **extra}
    return jwt.encode(body, key.private, algorithm=ALG, headers={"kid": key.kid})


def tamper(token: str) -> str:
    """A bad signature (one character of it changed), same header: known kid, must fail."""
    head, _, sig = token.rpartition(".")
    mid = len(sig) // 2
    return f"{head}.{sig[:mid]}{'A' if sig[mid] != 'A' else 'B'}{sig[mid + 1:]}"


class DpopClient:
    """A DPoP client's key pair (ES256) and its proofs (RFC 9449 §4.2), signed by PyJWT."""

    def __init__(self, name: str) -> None:
        self.key = generate_key("ES256", kid=name)
        public = self.key.public_jwk
        self.jwk = {name: public[name] for name in ("kty", "crv", "x", "y")}  # required members
        # RFC 7638: the required members in lexicographic order, no whitespace, SHA-256.
        canonical = json.dumps({k: self.jwk[k] for k in sorted(self.jwk)}, separators=(",", ":"))
        self.jkt = b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(self, token: str, htu: str, method: str = "GET") -> str:
        claims = {"jti": uuid.uuid4().hex, "htm": method, "htu": htu, "iat": int(time.time()),
                  "ath": b64url(hashlib.sha256(token.encode("ascii")).digest())}
        return jwt.encode(claims, self.key.private, algorithm="ES256",
                          headers={"typ": "dpop+jwt", "jwk": self.jwk})


class ProofLog:
    """Proofs answered 200, kept for replays (shared by the client threads: a replay may reach
    the other worker, and the memory is the sidecar's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=64)

    def add(self, token: str, proof: str) -> None:
        with self.lock:
            self.recent.append((time.monotonic(), token, proof))

    def pick(self, rng: random.Random) -> tuple[str, str] | None:
        now = time.monotonic()
        with self.lock:
            usable = [(t, p) for at, t, p in self.recent if now - at < REPLAY_WITHIN_S]
        return rng.choice(usable) if usable else None


class TokenPool:
    """Tokens per key generation: the repeated one, the revoked subjects' and the DPoP-bound
    one are minted once per key (they then meet the verified-token cache); unique and invalid
    ones are fresh each time."""

    def __init__(self, issuer: str, dpop_jkt: str) -> None:
        self.issuer = issuer
        self.dpop_jkt = dpop_jkt
        self.lock = threading.Lock()
        self.by_kid: dict[str, dict[str, str]] = {}

    def bound(self, key: SigningKey) -> str:
        return mint(key, self.issuer, "user-dpop", cnf={"jkt": self.dpop_jkt})

    def fixed(self, key: SigningKey) -> dict[str, str]:
        with self.lock:
            tokens = self.by_kid.get(key.kid)
            if tokens is None:
                tokens = {"repeat": mint(key, self.issuer, "user-repeat"), "dpop": self.bound(key)}
                tokens.update({sub: mint(key, self.issuer, sub) for sub in REVOKED_SUBJECTS})
                self.by_kid = {key.kid: tokens, **{k: v for k, v in list(self.by_kid.items())[-1:]}}
            return tokens


# --------------------------------------------------------------------------- judging answers


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    tolerated: collections.Counter = field(default_factory=collections.Counter)
    wrong: collections.Counter = field(default_factory=collections.Counter)
    unexpected_5xx: collections.Counter = field(default_factory=collections.Counter)
    transport_errors: int = 0
    examples: list[str] = field(default_factory=list)
    proofs_sent: int = 0  # fresh DPoP proofs (dpop and dpop-wrong-key), each sent once
    # Replays: (monotonic time sent, status, refused by the replay memory "already used").
    replays: list[tuple[float, int, bool]] = field(default_factory=list)

    def note(self, kind: str, status: int, verdict: str, detail: str = "") -> None:
        with self.lock:
            self.answered += 1
            self.by_kind[kind] += 1
            self.statuses[status] += 1
            if verdict.startswith("wrong"):
                self.wrong[f"{kind}: {verdict}"] += 1
            elif verdict.startswith("unexpected"):
                self.unexpected_5xx[f"{kind}: {status}"] += 1
            elif verdict.startswith("tolerated"):
                self.tolerated[f"{kind}: {verdict}"] += 1
            if not verdict.startswith(("ok", "tolerated")) and len(self.examples) < 20:
                self.examples.append(f"{kind} {status} {verdict} {detail[:200]}")


def description(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error_description", ""))
    except ValueError:
        return body[:100].decode("utf-8", "replace")


# Kinds that must pass (a revoked subject's only while the other one is on the list).
VALID_KINDS = ("repeat", "unique", "dpop")
REPLAY_REFUSED = "DPoP proof was already used"
REPLAY_FULL = "replay memory is full"


def judge(kind: str, status: int, headers: dict[str, str], body: bytes, *,
          revoked_now: str, revoked_steady: bool) -> str:
    """The verdict on one answer. `revoked_steady`: the list did not change within the grace
    before the request was sent nor while it was answered."""
    if status >= 500:
        # Documented: no keys could be had (e.g. an unknown kid while the key fetch fails) ->
        # 503 + Retry-After; a DPoP replay slot full -> 503 + Retry-After: 1. Never an allow,
        # so acceptable for any kind of token.
        if status == 503 and headers.get("retry-after"):
            if REPLAY_FULL in description(body):
                return "tolerated 503 replay memory full"
            return "tolerated 503 keys unavailable"
        return "unexpected 5xx"
    should_pass = kind in VALID_KINDS or (kind in REVOKED_SUBJECTS and kind != revoked_now)
    if kind in REVOKED_SUBJECTS and not revoked_steady:
        return "ok (list changing)" if status in (200, 401) else "wrong status"
    if should_pass:
        if status == 200:
            return "ok"
        # No forgiveness for a 401 (e.g. "key id is unknown" after a rotation): the plugin
        # holds such a request for a refetch and answers 503 + Retry-After if it fails.
        return f"wrong refused valid ({description(body)})"
    # Must be refused: invalid signature, expired, no token, a currently revoked subject, a
    # replayed proof, a proof by another key than cnf.jkt, a bound token sent as Bearer.
    if status == 200:
        return "wrong allowed"
    return "ok" if status in (401, 403) else "wrong status"


class Client(threading.Thread):
    """One keep-alive connection (as harness.http_request, but kept open), sending the mix."""

    # `dpop`: the bound token (the per-key one, or a fresh one a third of the time) with a fresh
    # proof; `dpop-replay`: a proof already answered 200, again; `dpop-wrong-key`: a fresh proof
    # by another client key than cnf.jkt; `dpop-bearer`: the bound token as Bearer, no proof.
    MIX = [("repeat", 32), ("unique", 18), ("invalid", 12), ("expired", 4), ("none", 4),
           (REVOKED_SUBJECTS[0], 6), (REVOKED_SUBJECTS[1], 6),
           ("dpop", 12), ("dpop-replay", 3), ("dpop-wrong-key", 2), ("dpop-bearer", 1)]

    def __init__(self, port: int, ring: KeyRing, revocation: RevocationList, pool: TokenPool,
                 tally: Tally, stop: threading.Event, issuer: str, dpop: DpopClient,
                 intruder: DpopClient, proofs: ProofLog) -> None:
        super().__init__(daemon=True)
        self.port, self.ring, self.revocation, self.pool = port, ring, revocation, pool
        self.tally, self.stop, self.issuer = tally, stop, issuer
        self.dpop, self.intruder, self.proofs = dpop, intruder, proofs
        self.htu = f"http://{LOOPBACK}:{port}/"  # the request's origin: no `origins` configured
        self.rng = random.Random()
        self.kinds = [k for k, _ in self.MIX]
        self.weights = [w for _, w in self.MIX]
        self.conn: http.client.HTTPConnection | None = None

    def token_for(self, kind: str, key: SigningKey) -> str | None:
        if kind == "repeat" or kind in REVOKED_SUBJECTS:
            return self.pool.fixed(key)[kind]
        if kind == "unique":
            return mint(key, self.issuer, f"user-{self.rng.randrange(1000)}")
        if kind == "invalid":
            return tamper(mint(key, self.issuer, "user-bad"))
        if kind == "expired":
            return mint(key, self.issuer, "user-old", lifetime=-3600)  # far past clockSkewSeconds
        if kind in ("dpop", "dpop-wrong-key", "dpop-bearer"):
            fresh = kind == "dpop" and self.rng.random() < 1 / 3
            return self.pool.bound(key) if fresh else self.pool.fixed(key)["dpop"]
        return None

    def request_headers(self, kind: str, key: SigningKey) -> tuple[str, dict[str, str], str | None]:
        """The kind actually sent (a replay with nothing to replay yet is a `dpop`), its
        headers, and the proof when it is a fresh one by the token's key."""
        if kind == "dpop-replay":
            picked = self.proofs.pick(self.rng)
            if picked is None:
                kind = "dpop"
            else:
                token, proof = picked
                return kind, {"Authorization": f"DPoP {token}", "DPoP": proof}, None
        token = self.token_for(kind, key)
        if kind in ("dpop", "dpop-wrong-key"):
            signer = self.dpop if kind == "dpop" else self.intruder
            proof = signer.proof(token, self.htu)
            with self.tally.lock:
                self.tally.proofs_sent += 1
            return kind, {"Authorization": f"DPoP {token}", "DPoP": proof}, proof if kind == "dpop" else None
        return kind, ({"Authorization": f"Bearer {token}"} if token else {}), None

    def send(self, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        self.conn.request("GET", "/", headers=headers)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def run(self) -> None:
        while not self.stop.is_set():
            kind = self.rng.choices(self.kinds, self.weights)[0]
            key, rotated_at = self.ring.snapshot()
            revoked_before, changed_before = self.revocation.snapshot()
            kind, request, proof = self.request_headers(kind, key)
            sent_at = time.monotonic()
            try:
                status, headers, body = self.send(request)
            except (OSError, http.client.HTTPException) as error:
                with self.tally.lock:
                    self.tally.transport_errors += 1
                    if len(self.tally.examples) < 20:
                        self.tally.examples.append(f"{kind} transport error {error!r}")
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                continue
            now = time.monotonic()
            revoked_after, changed_after = self.revocation.snapshot()
            steady = (changed_before == changed_after and now - changed_before > REVOCATION_GRACE_S
                      if changed_before else True)
            verdict = judge(kind, status, headers, body, revoked_now=revoked_before, revoked_steady=steady)
            why = description(body)
            if proof is not None and status == 200:
                self.proofs.add(request["Authorization"].split(" ", 1)[1], proof)
            if kind == "dpop-replay":
                with self.tally.lock:
                    self.tally.replays.append((sent_at, status, status == 401 and REPLAY_REFUSED in why))
            rotated = f"{now - rotated_at:.1f} s after a rotation" if rotated_at else "before any rotation"
            self.tally.note(kind, status, verdict, f"({rotated}) {why}")
        if self.conn is not None:
            self.conn.close()


# --------------------------------------------------------------------------- observing Envoy


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def all_stats(envoy: Envoy) -> dict[str, int]:
    out = {}
    for line in envoy.admin("/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


PLUGIN_STAT = re.compile(r"^wasmcustom\.mesh_oauth\.")
WASM_STAT = re.compile(r"^wasm\.|wasm.*memory|memory.*wasm")
MEMORY_STAT = re.compile(r"^server\.memory_")
TRACKED = ("wasm.envoy.wasm.runtime.v8.active", "wasm.wasm_vm_count", "server.memory_allocated",
           "server.memory_heap_size", CACHED_TOKENS_STAT, HELD_REQUESTS_STAT)


# --------------------------------------------------------------------------- the run


def quiet_resets(server: Any) -> None:
    """Envoy resetting an idle upstream or key-fetch connection is normal; socketserver would
    print a traceback for each."""
    original = server.httpd.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            original(request, client_address)

    server.httpd.handle_error = handle_error


def periodic(stop: threading.Event, every_s: float, action, name: str, errors: list[str]) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(every_s):
            try:
                action()
            except Exception as error:  # noqa: BLE001 - reported, fails the run
                errors.append(f"{name}: {error!r}"[:2000])

    thread = threading.Thread(target=loop, daemon=True, name=name)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the loaded run (fractions allowed)")
    parser.add_argument("--threads", type=int, default=CLIENT_THREADS, help="client threads")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.md")
    args = parser.parse_args()
    if not MODULE.exists():
        sys.exit(f"{MODULE} missing: run `make build`")
    duration = args.minutes * 60
    warmup = min(30.0, max(5.0, duration * 0.1))

    workdir = Path(tempfile.mkdtemp(prefix="mesh-oauth-soak-"))
    idp = FlakyIdp(failure_rate=0.0)  # no failures until Envoy has its first keys
    upstream = EchoServer()
    for server in (idp, upstream):
        quiet_resets(server)
    ring = KeyRing(idp)
    revocation = RevocationList(idp)
    dpop, intruder = DpopClient("soak-dpop-client"), DpopClient("soak-dpop-intruder")
    proofs = ProofLog()
    pool = TokenPool(idp.url, dpop.jkt)
    factory = EnvoyFactory(locate_envoy(), MODULE, upstream, workdir)
    realms = ["soak-a", "soak-b"]
    envoy = factory.build(plugin_config(idp, realms[0]), idps=[idp], concurrency=CONCURRENCY, pushable=True)
    envoy.start()  # from the main thread: see observe.start_together on parent-death signals
    assert envoy.proc is not None and envoy.port is not None
    log(f"envoy pid {envoy.proc.pid}, port {envoy.port}, admin {envoy.admin_port}; workdir {workdir}")

    stop = threading.Event()
    errors: list[str] = []
    tally = Tally()
    pushes = [0]

    def push() -> None:
        pushes[0] += 1
        envoy.push(plugin_config(idp, realms[pushes[0] % 2]))

    rss: list[tuple[float, int]] = []
    tracked: list[tuple[float, dict[str, int]]] = []
    started = time.monotonic()
    try:
        # Warm-up: both workers have keys and the list before the faults start.
        first = mint(ring.current, idp.url, "user-warm")
        for _ in range(20):
            conn = http.client.HTTPConnection(LOOPBACK, envoy.port, timeout=10)
            conn.request("GET", "/", headers={"Authorization": f"Bearer {first}"})
            status = conn.getresponse().status
            conn.close()
            if status != 200:
                raise RuntimeError(f"warm-up request answered {status}")
        idp.failure_rate = JWKS_FAILURE_RATE
        clients = [Client(envoy.port, ring, revocation, pool, tally, stop, idp.url, dpop, intruder, proofs)
                   for _ in range(args.threads)]
        for client in clients:
            client.start()
        periodic(stop, ROTATE_EVERY_S, ring.rotate, "rotate", errors)
        periodic(stop, PUSH_EVERY_S, push, "push", errors)
        periodic(stop, REVOKE_EVERY_S, revocation.change, "revoke", errors)

        started = time.monotonic()
        next_report = started + 30
        while (now := time.monotonic()) - started < duration:
            rss.append((now - started, rss_kib(envoy.proc.pid)))
            # VM count and allocator with each RSS sample: a push that leaks VMs shows here first.
            tracked.append((now - started, {k: v for k, v in all_stats(envoy).items() if k in TRACKED}))
            if envoy.proc.poll() is not None:
                errors.append(f"envoy exited with {envoy.proc.returncode}")
                break
            if now >= next_report:
                next_report += 30
                log(f"{now - started:.0f}s: {tally.answered} answered, {sum(tally.wrong.values())} wrong, "
                    f"{sum(tally.unexpected_5xx.values())} unexpected 5xx, RSS {rss[-1][1] / 1024:.1f} MiB")
            time.sleep(RSS_SAMPLE_EVERY_S)
        elapsed = time.monotonic() - started
        stop.set()
        for client in clients:
            client.join(15)
        time.sleep(0.3)  # the plugin hands counters to Envoy on its next tick
        final_stats = all_stats(envoy) if envoy.proc.poll() is None else {}
        rss.append((elapsed, rss_kib(envoy.proc.pid)) if envoy.proc.poll() is None else (elapsed, 0))
        crash_lines = envoy.crash_lines()
    finally:
        stop.set()
        envoy.stop()
        upstream.stop()
        idp.stop()

    # RSS: start = first sample after warm-up, middle = nearest the half, end = last.
    after = [s for s in rss if s[0] >= warmup] or rss
    rss_start = after[0]
    rss_mid = min(after, key=lambda s: abs(s[0] - elapsed / 2))
    rss_end = after[-1]
    rss_max = max(s[1] for s in after)
    drift = (rss_end[1] - rss_start[1]) / rss_start[1] if rss_start[1] else 0.0
    peak = (rss_max - rss_start[1]) / rss_start[1] if rss_start[1] else 0.0
    flat = abs(drift) <= RSS_FLAT_WITHIN and peak <= RSS_FLAT_WITHIN

    def at(t: float) -> dict[str, int]:
        return min(tracked, key=lambda s: abs(s[0] - t))[1] if tracked else {}

    tracked_rows = [f"    {name}: start {at(rss_start[0]).get(name)}, middle {at(rss_mid[0]).get(name)}, "
                    f"end {at(rss_end[0]).get(name)}" for name in TRACKED]

    def gauge(name: str, limit_name: str, per_worker: int) -> tuple[str, bool]:
        """The gauge over the run's samples, and whether it broke its bound (limit × workers,
        the gauge being the sum over workers). Absent (an older module): said, not a failure."""
        if not any(name in v for _, v in tracked):
            return f"not exposed by this module (no {name} in /stats)", False
        # A gauge appears in /stats once first set: absent before that means 0.
        values = [v.get(name, 0) for _, v in tracked]
        bound = per_worker * CONCURRENCY
        broke = max(values) > bound
        return (f"start {at(rss_start[0]).get(name, 0)}, middle {at(rss_mid[0]).get(name, 0)}, end "
                f"{at(rss_end[0]).get(name, 0)}, max {max(values)} over {len(values)} samples; bound "
                f"{limit_name} {per_worker} × {CONCURRENCY} workers = {bound}: "
                f"{'EXCEEDED' if broke else 'held'}{' (reached)' if max(values) == bound else ''}", broke)

    cached_line, cached_broke = gauge(CACHED_TOKENS_STAT, "limits.maxCachedTokens", MAX_CACHED_TOKENS)
    held_line, held_broke = gauge(HELD_REQUESTS_STAT, "limits.maxHeldRequests", MAX_HELD_REQUESTS)
    # Replays: all of them, and those of the last quarter of the run (the memory still works
    # after most of the run's proofs went through it).
    late_from = started + 0.75 * elapsed
    replays = tally.replays
    late = [r for r in replays if r[0] >= late_from]
    by_memory = sum(1 for r in replays if r[2])
    late_by_memory = sum(1 for r in late if r[2])
    replays_allowed = sum(1 for r in replays if r[1] == 200)
    replay_full = sum(n for k, n in tally.tolerated.items() if "replay memory full" in k)
    dpop_line = (f"- DPoP (`dpop.mode` {DPOP_MODE}, `maxAgeSeconds` {DPOP_MAX_AGE_S}, origin "
                 f"http://{LOOPBACK}:<port>): {tally.proofs_sent} fresh proofs sent "
                 f"({tally.by_kind.get('dpop', 0)} by the bound key, {tally.by_kind.get('dpop-wrong-key', 0)} "
                 f"by another key), {len(replays)} replays of proofs answered 200 (within "
                 f"{REPLAY_WITHIN_S:.0f} s): {by_memory} refused as \"{REPLAY_REFUSED}\", "
                 f"{replays_allowed} allowed; in the last quarter of the run {late_by_memory} of "
                 f"{len(late)} refused by the replay memory")
    replay_memory_line = (f"- DPoP replay memory: `limits.maxDpopProofs` {MAX_DPOP_PROOFS} "
                          f"({MAX_DPOP_PROOFS // DPOP_SLOT_ENTRIES} slots of {DPOP_SLOT_ENTRIES}), fixed-size "
                          f"shared data by construction, an entry kept for its {DPOP_WINDOW_S} s window; "
                          f"503 \"replay memory is full\": {replay_full}; late replays still refused: "
                          f"{'yes' if late and late_by_memory == len(late) else ('none sent' if not late else 'NOT all')}")
    plugin = {k[len("wasmcustom."):]: v for k, v in final_stats.items() if PLUGIN_STAT.match(k)}
    wasm = {k: v for k, v in final_stats.items() if WASM_STAT.search(k)}
    memory = {k: v for k, v in final_stats.items() if MEMORY_STAT.match(k)}
    linear = {k: v for k, v in wasm.items() if "memory" in k}

    wrong = sum(tally.wrong.values())
    unexpected = sum(tally.unexpected_5xx.values())
    lines = [
        "# mesh-oauth soak run",
        "",
        f"- duration: {elapsed / 60:.2f} min of load (warm-up {warmup:.0f} s excluded from the RSS baseline), "
        f"{args.threads} client threads, Envoy --concurrency {CONCURRENCY}",
        f"- faults: {ring.generation} key rotations (every {ROTATE_EVERY_S:.0f} s), {pushes[0]} configuration "
        f"pushes (every {PUSH_EVERY_S:.0f} s), {revocation.changes} revocation list changes (every "
        f"{REVOKE_EVERY_S:.0f} s), {idp.jwks_failures} of {idp.count()} JWKS fetches answered 500 "
        f"(target {JWKS_FAILURE_RATE:.0%})",
        f"- requests answered: {tally.answered} ({tally.answered / elapsed:.0f}/s); transport errors: "
        f"{tally.transport_errors}",
        f"- by kind: {dict(sorted(tally.by_kind.items()))}",
        f"- statuses: {dict(sorted(tally.statuses.items()))}",
        f"- **wrong answers: {wrong}** {dict(tally.wrong) or ''}",
        f"- **unexpected 5xx: {unexpected}** {dict(tally.unexpected_5xx) or ''}",
        f"- tolerated (documented): {dict(tally.tolerated) or 0}",
        dpop_line,
        replay_memory_line,
        f"- verified-token cache (`mesh_oauth.cached_tokens`, summed over workers, sampled every "
        f"{RSS_SAMPLE_EVERY_S:.0f} s): {cached_line}",
        f"- held requests (`mesh_oauth.held_requests`, summed over workers, sampled every "
        f"{RSS_SAMPLE_EVERY_S:.0f} s): {held_line}",
        f"- Envoy RSS: start {rss_start[1] / 1024:.1f} MiB (t={rss_start[0]:.0f} s), middle "
        f"{rss_mid[1] / 1024:.1f} MiB (t={rss_mid[0]:.0f} s), end {rss_end[1] / 1024:.1f} MiB "
        f"(t={rss_end[0]:.0f} s), max {rss_max / 1024:.1f} MiB; end vs start {drift:+.1%}, max vs start "
        f"{peak:+.1%}: {'flat' if flat else 'NOT flat'} within {RSS_FLAT_WITHIN:.0%}",
        f"- Envoy allocator at the end: {memory or 'not available'}",
        f"- Wasm linear memory per VM: {linear or 'not exposed by this Envoy (no wasm memory stat in /stats)'}",
        f"- Wasm runtime stats: {wasm or 'none'}",
        f"- crash lines in the Envoy log: {len(crash_lines)}",
        f"- harness errors: {errors or 'none'}",
        "",
        "## Wasm VMs and allocator over the run (same sample times as RSS)",
        "",
        *tracked_rows,
        "",
        "## Plugin metrics (/stats, wasmcustom.mesh_oauth.*)",
        "",
        *[f"    {k}: {v}" for k, v in sorted(plugin.items())],
    ]
    if tally.examples:
        lines += ["", "## First non-ok answers", "", *[f"    {e}" for e in tally.examples]]
    if crash_lines:
        lines += ["", "## Crash lines", "", *[f"    {c}" for c in crash_lines[:20]]]
    report = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    log(f"written {args.output}")
    failed = (wrong > 0 or unexpected > 0 or bool(crash_lines) or bool(errors) or tally.answered == 0
              or cached_broke or held_broke)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
