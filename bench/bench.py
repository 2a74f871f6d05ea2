#!/usr/bin/env python3
"""`make bench`: mesh-oauth against what Istio users have, and against the floor of any Wasm
filter, in one Envoy binary on this machine (issue 6).

Arms, interleaved A B C D E (F) in every round, each a fresh Envoy (`--concurrency 1`, pinned to
one core; wrk pinned to another, keep-alive, direct_response upstream):
  A none            no auth filter
  B jwt_authn       Envoy's native filter, the same provider (inline JWKS), no token cache
  C jwt_authn+cache the same with `jwt_cache_config`
  D empty-wasm      bench/empty-filter: reads and removes the token header, nothing else
  E mesh-oauth      dist/mesh_oauth.wasm in V8
The repeated-token workload also runs the floor decomposed (issue 30), between D and E: the
empty filter making other host calls per request (its plugin configuration; FLOOR_ARMS):
  W wasm no calls   no host call at all (Envoy's calls into the module per request only)
  K wasm map read   the whole request header map (get_header_map_pairs, as mesh-oauth reads it)
                    + the removal, instead of D's one value read
  L wasm 6 reads    six get_header_map_value (authorization, dpop, cookie, :authority, :path,
                    :method: what mesh-oauth's core may read) + the removal
  S wasm size check D + get_header_map_size before the read and after the removal (a repeated
                    field shows as more bytes gone than the one value read)
  M wasm E's calls  mesh-oauth's host calls on a cached request and nothing else: the map read,
                    the clock, the removal, a ~400-byte warn line every 100th request (the audit
                    sample); so E − M (CPU-µs/req) is mesh-oauth's own work in the module
and the outbound workload, between D and N:
  P wasm O's calls  arm O's host calls on a cached request and nothing else (the map read, the
                    clock, a 684-byte token in place of the user's, the 1 % line): O − P is
                    mesh-oauth's own work there
  F mesh-oauth (baseline)  with --baseline-wasm PATH only: arm E's configuration, the module at
                    PATH (e.g. built from an earlier commit by `make bench-baseline REF=...`),
                    run right after E wherever E runs (in workload outbound: arm O's
                    configuration, right after O); the report adds E ÷ F per workload
Workloads: one RS256 token repeated; a unique token per request (RS256, ES256, EdDSA, PS256) from a
pre-minted pool; every other request an invalid (bad-signature) token; one DPoP-bound ES256
token with a fresh ES256 proof per request (RFC 9449; arms A, D and E (F) only: jwt_authn cannot
check a proof); a browser session (`session`, bench/login_arms.py: the cookies of real logins at
npm oidc-provider, with arms G oauth2, H oauth2+jwt_authn, I the same with its cache, E mesh-oauth's
`login`, J mesh-oauth with the session's token as a bearer).
Workload `outbound` (issue 29, bench/outbound_arms.py): arms A, D, P and N credential_injector, O
mesh-oauth clientCredentials, X mesh-oauth tokenExchange, against a real authorization server;
then token-endpoint calls per token lifetime with 4 workers.

Writes bench/results/{report.md, chart.png, runs.json} and prints a summary. Tokens are minted
by cryptography (tests/integration/tokens.py), never by the project."""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from harness import LOOPBACK, Envoy, locate_envoy, wasm_filter  # noqa: E402
import outbound_arms  # noqa: E402  (bench/, next to this file)
from tokens import KeySet, SigningKey, b64url, generate_key  # noqa: E402

BENCH = REPO / "bench"
RESULTS = BENCH / "results"
POOL_DIR = REPO / ".cache" / "bench" / "tokens"
WASM_TARGET = "wasm32-wasip1"
MODULE = REPO / "dist" / "mesh_oauth.wasm"
EMPTY_FILTER_DIR = BENCH / "empty-filter"
EMPTY_FILTER = EMPTY_FILTER_DIR / "target" / WASM_TARGET / "release" / "empty_filter.wasm"
LUA = BENCH / "tokens.lua"

ISSUER = "https://bench.idp.test"
AUDIENCE = "api"
ALGS = ["RS256", "ES256", "EdDSA", "PS256"]
# Both token caches hold this many tokens: mesh-oauth's default `limits.maxCachedTokens`.
CACHE_SIZE = 1024
# A pool outlives its tokens' use by a wide margin: tokens are valid for a day.
TOKEN_LIFETIME_S = 86_400
POOL_MAX_AGE_S = 12 * 3600
# DPoP (issue 17): proofs for `GET http://bench.local/`, accepted by arm E through `origins`
# (wrk's Host is the loopback address). A proof is good for `maxAgeSeconds` after its `iat`;
# the filter allows at most an hour, so proofs are minted for the hour and re-minted before
# any run that would outlive them (DPOP_MARGIN_S to spare).
DPOP_HTU = "http://bench.local/"
DPOP_ORIGIN = "http://bench.local"
DPOP_MAX_AGE_S = 3600  # MAX_DPOP_MAX_AGE_SECONDS in src/config/sender.rs
DPOP_MARGIN_S = 120
# The replay memory is slots of 16 proofs (src/sender/replay.rs), a proof's slot picked by its
# hash: `limits.maxDpopProofs` = every proof a run could send × this factor, rounded up to a
# whole slot, so that no slot fills up (a full slot answers 503) even if a run used them all.
DPOP_SLOT_ENTRIES = 16
DPOP_MEMORY_FACTOR = 4
# Default proofs per second of a run: above what the fastest arm (A, no auth) sends here.
DPOP_PROOFS_PER_S = 50_000
ENVOY_CPU, LOAD_CPU = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# --------------------------------------------------------------------------- arms, workloads

# The floor's parts (issue 30): bench/empty-filter with other host calls per request, chosen by
# its plugin configuration (steps; see its lib.rs). Each arm differs from D (one
# `get_header_map_value` + one removal) by known host calls, so in Envoy CPU-µs/req
# K − D is what the whole-map read costs over one value read, M − K the clock and the 1 % audit
# line, E − M mesh-oauth's own work in the module.
FLOOR_ARMS = {
    "W": ("wasm no calls", "none"),  # no host call at all: Envoy's calls into the module only
    "K": ("wasm map read", "pairs"),  # get_header_map_pairs (the whole map) + removal
    "L": ("wasm 6 reads", "values"),  # get_header_map_value × 6 (what the core may read) + removal
    "S": ("wasm size check", "value size"),  # D + get_header_map_size before the read and after the removal
    "M": ("wasm E's calls", "pairs clock log"),  # mesh-oauth's cached-path host calls, no module work
    # The outbound workload's: arm O's cached-path host calls (the token put in place), no module work.
    "P": ("wasm O's calls", "pairs clock log set"),
}
# The repeated-token workload's arms: the floor's parts between D and E.
REPEAT_ARMS = "ABCDWKLSME"


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    verifies: bool


ARMS = [
    Arm("A", "no auth", False),
    Arm("B", "jwt_authn", True),
    Arm("C", "jwt_authn+cache", True),
    Arm("D", "empty wasm", False),
    # The floor decomposed (issue 30; repeated token only): the empty filter making other host calls.
    *(Arm(key, label, False) for key, (label, _) in FLOOR_ARMS.items()),
    Arm("E", "mesh-oauth", True),
    # The outbound workload's (issue 29): credential_injector, mesh-oauth clientCredentials, tokenExchange.
    *(Arm(*spec) for spec in outbound_arms.ARMS),
]
# Arm F runs only with --baseline-wasm (see enable_baseline); without it nothing changes.
BASELINE_ARM = Arm("F", "mesh-oauth (baseline)", True)
ARM = {arm.key: arm for arm in [*ARMS, BASELINE_ARM]}
# The module arm F loads (set by enable_baseline).
BASELINE_MODULE: Path | None = None


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    alg: str
    mode: str  # tokens.lua mode: repeat, pool, mix or dpop
    arms: str = "ABCDE"  # the arms that run it, in order

    @property
    def arm_list(self) -> list[Arm]:
        return [ARM[key] for key in self.arms]


WORKLOADS = [
    Workload("repeat", "repeated RS256 token", "RS256", "repeat", arms=REPEAT_ARMS),
    Workload("unique-RS256", "unique RS256 tokens", "RS256", "pool"),
    Workload("unique-ES256", "unique ES256 tokens", "ES256", "pool"),
    Workload("unique-EdDSA", "unique EdDSA tokens", "EdDSA", "pool"),
    Workload("unique-PS256", "unique PS256 tokens", "PS256", "pool"),
    Workload("mix", "50 % invalid (repeated valid / unique bad signature)", "RS256", "mix"),
    # jwt_authn cannot check a DPoP proof (B and C would refuse the scheme or skip the proof).
    Workload("dpop-ES256", "DPoP-bound ES256 token, a fresh ES256 proof per request", "ES256", "dpop",
             arms="ADE"),
    Workload(*outbound_arms.WORKLOAD),
]
WORKLOAD = {w.key: w for w in WORKLOADS}

# The browser-session workload (issue 28) and its arms G, H, I: bench/login_arms.py.
import login_arms  # noqa: E402

SESSION = login_arms.SessionWorkload(sys.modules[__name__])


def enable_baseline(module: Path) -> None:
    """Adds arm F: arm E's configuration with `module`, right after E in every workload E runs
    (same rounds, same interleaving), so that E ÷ F is a before/after in one run."""
    global BASELINE_MODULE
    BASELINE_MODULE = module
    ARMS.append(BASELINE_ARM)
    WORKLOADS[:] = [replace(w, arms=baseline_arms(w)) for w in WORKLOADS]
    WORKLOAD.update({w.key: w for w in WORKLOADS})


def baseline_arms(w: Workload) -> str:
    """A workload's arms with F right after the arm it compares with: E, or in the outbound
    workload O (outbound_arms.BASELINE_OF)."""
    if w.key == outbound_arms.WORKLOAD_KEY:
        return w.arms.replace(outbound_arms.BASELINE_OF, outbound_arms.BASELINE_OF + "F")
    return w.arms.replace("E", "EF")


def baseline_of(workload: str) -> str:
    """The arm F runs the configuration of in `workload`."""
    return outbound_arms.BASELINE_OF if workload == outbound_arms.WORKLOAD_KEY else "E"


# --------------------------------------------------------------------------- set-up


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def ensure_tools() -> None:
    """wrk and taskset from Debian when missing (a fresh machine has neither wrk nor, in a
    slim image, util-linux's taskset)."""
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("taskset", "util-linux")) if not shutil.which(tool)]
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=subprocess.DEVNULL)


def build(with_micro: bool) -> subprocess.Popen[str] | None:
    """Builds the two Wasm modules; starts building the micro-benchmarks (an LTO build, the
    slowest step on a fresh machine) in the background, to overlap with token minting."""
    log("building the module (make build) and the empty filter")
    run(["make", "build"], cwd=REPO)
    run(["cargo", "build", "--release", "--target", WASM_TARGET], cwd=EMPTY_FILTER_DIR)
    if not with_micro:
        return None
    log("building the micro-benchmarks in the background (cargo bench --no-run)")
    return subprocess.Popen(["cargo", "bench", "--no-default-features", "--bench", "core", "--no-run"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(job: subprocess.Popen[str] | None) -> None:
    if job is None:
        return
    output, _ = job.communicate()
    if job.returncode != 0:
        raise RuntimeError(f"cargo bench --no-run failed:\n{output}")


# --------------------------------------------------------------------------- tokens


_MINT_KEYS: KeySet | None = None


def _mint_range(job: tuple[str, int, int, int]) -> list[str]:
    """Tokens `start..end` of one pool (in a forked worker: keys are inherited, not pickled)."""
    alg, start, end, created = job
    assert _MINT_KEYS is not None
    key = _MINT_KEYS[alg]
    header = json.dumps({"alg": alg, "kid": key.kid, "typ": "JWT"}, separators=(",", ":")).encode()
    out = []
    for n in range(start, end):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{n % 1000}", "iat": created,
                  "exp": created + TOKEN_LIFETIME_S, "jti": f"{alg}-{n}", "scope": "orders:read"}
        out.append(_MINT_KEYS.sign_raw(alg, header, json.dumps(claims, separators=(",", ":")).encode()))
    return out


def tamper(token: str) -> str:
    """The same token with one signature character changed: well-formed, bad signature."""
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    replacement = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{replacement}{signature[middle + 1:]}"


def _load_keys(meta: dict[str, Any]) -> KeySet:
    keys = KeySet([])
    for alg, entry in meta["keys"].items():
        private = serialization.load_pem_private_key(entry["pem"].encode(), password=None)
        keys.keys[alg] = SigningKey(alg, entry["kid"], private)
    return keys


def token_files(pool_sizes: dict[str, int]) -> tuple[KeySet, dict[str, Path]]:
    """Keys and token files, reused from .cache/bench when young enough and large enough
    (minting RSA tokens is the slow part of a fresh run). Files: `<alg>.repeat` (one token),
    `<alg>.pool` (unique tokens), `RS256.invalid` (unique tokens with bad signatures)."""
    global _MINT_KEYS
    meta_path = POOL_DIR / "meta.json"
    now = int(time.time())
    try:
        meta = json.loads(meta_path.read_text())
        fresh = now - meta["created"] < POOL_MAX_AGE_S and all(
            meta["sizes"].get(alg, 0) >= size for alg, size in pool_sizes.items())
    except (OSError, ValueError, KeyError):
        meta, fresh = {}, False
    files = {name: POOL_DIR / name for name in
             [f"{alg}.{kind}" for alg in ALGS for kind in ("repeat", "pool")] + ["RS256.invalid"]}
    if fresh and all(path.exists() for path in files.values()):
        log(f"reusing token pools from {POOL_DIR} (minted {(now - meta['created']) // 60} min ago)")
        return _load_keys(meta), files

    POOL_DIR.mkdir(parents=True, exist_ok=True)
    keys = KeySet(ALGS)
    _MINT_KEYS = keys
    created = now - 60
    started = time.monotonic()
    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    log(f"minting token pools ({', '.join(f'{alg} {n}' for alg, n in pool_sizes.items())}) "
        f"with {workers} processes")
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for alg in ALGS:
            size = pool_sizes[alg]
            chunk = max(1, size // (workers * 4))
            jobs = [(alg, start, min(start + chunk, size + 1), created) for start in range(0, size + 1, chunk)]
            tokens = [t for part in pool.map(_mint_range, jobs) for t in part]
            # The repeated token is not in the pool, so a warm-up with it never warms a pool token.
            files[f"{alg}.repeat"].write_text(tokens[0] + "\n")
            files[f"{alg}.pool"].write_text("\n".join(tokens[1:]) + "\n")
            if alg == "RS256":
                files["RS256.invalid"].write_text("\n".join(tamper(t) for t in tokens[1:]) + "\n")
    meta = {
        "created": now,
        "sizes": pool_sizes,
        "keys": {alg: {"kid": key.kid, "pem": key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()} for alg, key in keys.keys.items()},
    }
    meta_path.write_text(json.dumps(meta))
    log(f"minted in {time.monotonic() - started:.1f} s")
    return keys, files


# The client's key and proof template, for forked minting workers (inherited, not pickled).
_DPOP_CLIENT: tuple[SigningKey, bytes, str] | None = None


def client_jwk(key: SigningKey) -> dict[str, str]:
    """The client's public key as a proof's `jwk` carries it: the required members only."""
    jwk = key.public_jwk
    return {name: jwk[name] for name in ("kty", "crv", "x", "y")}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members in lexicographic order, no whitespace."""
    canonical = json.dumps({name: jwk[name] for name in sorted(("crv", "kty", "x", "y"))},
                           separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _mint_proofs(job: tuple[str, int, int, int]) -> list[str]:
    """DPoP proofs `start..end` of one batch (RFC 9449 §4.2), each with its own `jti`."""
    batch, start, end, iat = job
    assert _DPOP_CLIENT is not None
    client, header, ath = _DPOP_CLIENT
    head = b64url(header)
    out = []
    for n in range(start, end):
        claims = {"jti": f"{batch}-{n}", "htm": "GET", "htu": DPOP_HTU, "iat": iat, "ath": ath}
        signing_input = f"{head}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        # SigningKey.sign: ES256 as JOSE wants it, raw r || s (64 bytes), not DER.
        out.append(f"{signing_input}.{b64url(client.sign(signing_input.encode()))}")
    return out


# Proof pools by use: the timed window's and the warm-up's.
DPOP_POOLS = {"timed": "ES256.dpop-proofs", "warmup": "ES256.dpop-warmup"}


def dpop_memory(sizes: dict[str, int]) -> int:
    """`limits.maxDpopProofs` for arm E: see DPOP_MEMORY_FACTOR (the filter makes
    maxDpopProofs ÷ 16 slots, so a multiple of 16)."""
    wanted = DPOP_MEMORY_FACTOR * sum(sizes.values())
    return -(-wanted // DPOP_SLOT_ENTRIES) * DPOP_SLOT_ENTRIES


def dpop_files(keys: KeySet, sizes: dict[str, int], valid_for: float, quiet: bool = False) -> dict[str, Path]:
    """The DPoP workload's files, reused from .cache/bench/tokens like the other pools while
    they were minted by the same issuer key, are large enough and every proof stays within
    `maxAgeSeconds` (less DPOP_MARGIN_S) for `valid_for` more seconds; else minted afresh.
    `ES256.dpop-token`: one access token signed by the bench's ES256 key, bound to a new client
    key (`cnf.jkt`, RFC 7638); `ES256.dpop-proofs` (timed runs) and `ES256.dpop-warmup`
    (warm-ups, never the same proofs: each run's Envoy is fresh, so its replay memory is
    empty, but a proof sent in the warm-up would be a replay in the timed window)."""
    global _DPOP_CLIENT
    meta_path = POOL_DIR / "dpop-meta.json"
    files = {name: POOL_DIR / name for name in ["ES256.dpop-token", *DPOP_POOLS.values()]}
    issuer = keys["ES256"]
    now = time.time()
    try:
        meta = json.loads(meta_path.read_text())
        age_at_end = now - meta["iat"] + valid_for
        fresh = (meta["issuer_kid"] == issuer.kid and age_at_end <= DPOP_MAX_AGE_S - DPOP_MARGIN_S
                 and all(meta["sizes"].get(kind, 0) >= n for kind, n in sizes.items()))
    except (OSError, ValueError, KeyError):
        meta, fresh = {}, False
    if fresh and all(path.exists() for path in files.values()):
        if not quiet:
            log(f"reusing DPoP proofs from {POOL_DIR} (minted {(now - meta['iat']) / 60:.0f} min ago, "
                f"good for {(DPOP_MAX_AGE_S - DPOP_MARGIN_S - (now - meta['iat'])) / 60:.0f} min more)")
        return files

    POOL_DIR.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # half-written files must never pass for a good pool
    iat = int(now)
    created = iat - 60
    client = generate_key("ES256", kid="bench-dpop-client")
    jwk = client_jwk(client)
    token_claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dpop-client", "iat": created,
                    "exp": created + TOKEN_LIFETIME_S, "jti": f"dpop-{os.urandom(6).hex()}",
                    "scope": "orders:read", "cnf": {"jkt": jwk_thumbprint(jwk)}}
    token_header = json.dumps({"alg": "ES256", "kid": issuer.kid, "typ": "JWT"}, separators=(",", ":"))
    token = keys.sign_raw("ES256", token_header.encode(), json.dumps(token_claims, separators=(",", ":")).encode())
    ath = b64url(hashlib.sha256(token.encode("ascii")).digest())
    header = json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, separators=(",", ":")).encode()
    _DPOP_CLIENT = (client, header, ath)
    batch = os.urandom(6).hex()  # jti prefix: no two mintings share a proof id
    started = time.monotonic()
    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    log(f"minting DPoP proofs ({', '.join(f'{kind} {n}' for kind, n in sizes.items())}) with {workers} processes")
    files["ES256.dpop-token"].write_text(token + "\n")
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for kind, size in sizes.items():
            chunk = max(1, size // (workers * 4))
            jobs = [(f"{batch}-{kind}", start, min(start + chunk, size), iat) for start in range(0, size, chunk)]
            proofs = [p for part in pool.map(_mint_proofs, jobs) for p in part]
            files[DPOP_POOLS[kind]].write_text("\n".join(proofs) + "\n")
    meta_path.write_text(json.dumps({"iat": iat, "issuer_kid": issuer.kid, "sizes": sizes}))
    log(f"minted in {time.monotonic() - started:.1f} s")
    return files


# --------------------------------------------------------------------------- Envoy


def jwt_authn_filter(jwks: str, cache: bool) -> dict[str, Any]:
    provider: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": jwks},
        "forward": False,
        # Istio's generated provider puts the payload in dynamic metadata for its policies.
        "payload_in_metadata": ISSUER,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": CACHE_SIZE}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


# `--mesh-limits`: plugin `limits` for arm E, to measure a lever (e.g. the token cache off).
MESH_LIMITS: dict[str, Any] = {}
# `limits.maxDpopProofs` for arm E in the DPoP workload (set in main from the pool sizes).
DPOP_LIMITS: dict[str, Any] = {}


def arm_filters(arm: str, jwks: str, workload: Workload | None = None) -> list[dict[str, Any]]:
    if arm == "A":
        return []
    if arm in ("B", "C"):
        return [jwt_authn_filter(jwks, cache=arm == "C")]
    if arm == "D":
        return [wasm_filter(EMPTY_FILTER, "")]
    if arm in FLOOR_ARMS:
        return [wasm_filter(EMPTY_FILTER, FLOOR_ARMS[arm][1])]
    if arm in outbound_arms.ARM_KEYS:
        return outbound_arms.filters(arm, MODULE)
    if arm == "F" and workload is not None and workload.key == outbound_arms.WORKLOAD_KEY:
        assert BASELINE_MODULE is not None, "arm F without --baseline-wasm"
        return outbound_arms.filters(outbound_arms.BASELINE_OF, BASELINE_MODULE)
    provider: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}
    limits = dict(MESH_LIMITS)
    if workload is not None and workload.mode == "dpop":
        # The longest window the filter allows: the pool is minted once for many runs.
        provider["dpop"] = {"mode": "required", "algorithms": [workload.alg],
                            "maxAgeSeconds": DPOP_MAX_AGE_S, "origins": [DPOP_ORIGIN]}
        limits = {**DPOP_LIMITS, **limits}
    plugin: dict[str, Any] = {"providers": [provider]}
    if limits:
        plugin["limits"] = limits
    module = BASELINE_MODULE if arm == "F" else MODULE
    assert module is not None, "arm F without --baseline-wasm"
    return [wasm_filter(module, json.dumps(plugin))]


def bootstrap(http_filters: list[dict[str, Any]], resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """Listener and admin on kernel-chosen ports; every request that passes the filters is
    answered by Envoy itself (direct_response), so only the filter's cost shows. `resources`:
    more static resources (an outbound arm's clusters and secrets)."""
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "HTTP1",
        "route_config": {"name": "local", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}],
        }]},
        "http_filters": [*http_filters, router],
    }
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "main",
            "address": {"socket_address": {"address": LOOPBACK, "port_value": 0}},
            "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
        }], **(resources or {})},
    }


def start_envoy(binary: Path, workdir: Path, filters: list[dict[str, Any]], concurrency: int,
                pin: bool, config: dict[str, Any] | None = None,
                resources: dict[str, Any] | None = None) -> Envoy:
    """Envoy with every thread on ENVOY_CPU: the affinity is set around the fork, so the
    process inherits it before it starts any thread. `config`: a whole bootstrap instead;
    `resources`: static resources added to the bootstrap (clusters, secrets)."""
    envoy = Envoy(binary, workdir, config or bootstrap(filters, resources), concurrency)
    saved = os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {ENVOY_CPU})
    try:
        envoy.start()
    finally:
        os.sched_setaffinity(0, saved)
    return envoy


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def rss_bytes(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match, "no VmRSS in /proc status"
    return int(match.group(1)) * 1024


def jwt_cache_hits(envoy: Envoy) -> int | None:
    stats = envoy.admin("/stats?filter=jwt_cache_hit").body.decode()
    counts = [int(m.group(1)) for m in re.finditer(r"jwt_cache_hit: (\d+)", stats)]
    return sum(counts) if counts else None


# --------------------------------------------------------------------------- load


def wrk(port: int, seconds: int, connections: int, lua_args: list[str], pin: bool) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(LUA), f"http://{LOOPBACK}:{port}/", "--", *lua_args]
    if pin:
        cmd = ["taskset", "-c", str(LOAD_CPU), *cmd]
    out = subprocess.run(cmd, check=True, text=True, capture_output=True, timeout=seconds + 60).stdout
    line = next((l for l in out.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return json.loads(line[len("BENCH "):])


def lua_args(workload: Workload, files: dict[str, Path], warmup: bool = False) -> list[str]:
    alg = workload.alg
    if workload.mode == "dpop":
        pool = DPOP_POOLS["warmup" if warmup else "timed"]
        return ["dpop", str(files[f"{alg}.dpop-token"]), str(files[pool])]
    if workload.mode == "repeat":
        return ["repeat", str(files[f"{alg}.repeat"])]
    if workload.mode == "pool":
        return ["pool", str(files[f"{alg}.pool"])]
    return ["mix", str(files[f"{alg}.repeat"]), str(files["RS256.invalid"])]


@dataclass
class Run:
    round: int
    workload: str
    arm: str
    rps: float
    p50_us: int
    p99_us: int
    cpu_us_per_req: float
    requests: int
    non_2xx: int
    errors: int
    pool_tokens_used: int
    pool_wraps: int
    jwt_cache_hits: int | None
    # Share of one core used over the timed window: Envoy well below 100 % means something else
    # ran on its core; wrk near 100 % means the load generator, not Envoy, set the pace.
    envoy_cpu_pct: float
    wrk_cpu_pct: float
    problems: list[str] = field(default_factory=list)


def expected_refusals(workload: Workload, arm: Arm, result: dict[str, Any]) -> list[str]:
    """What a run must show to mean anything: valid tokens all pass; in the mix, an arm that
    verifies refuses every other request and one that does not refuses none."""
    total, refused = result["requests"], result["non_2xx"]
    errors = result["connect_errors"] + result["read_errors"] + result["write_errors"] + result["timeouts"]
    problems = []
    if total == 0:
        return ["no requests completed"]
    if errors:
        problems.append(f"{errors} socket errors/timeouts")
    if workload.mode == "mix" and arm.verifies:
        if abs(refused / total - 0.5) > 0.01:
            problems.append(f"{refused}/{total} refused, expected half")
    elif refused:
        problems.append(f"{refused}/{total} answered non-2xx, expected none")
    if workload.mode == "dpop" and result["pool_wraps"]:
        # Every proof after a wrap is a replay (E refuses it); in A and D the run is still
        # not the workload it claims to be. A larger --pool-dpop is the cure.
        problems.append(f"the proof pool wrapped {result['pool_wraps']} times "
                        f"({result['pool_tokens_used']:,} proofs sent): replayed proofs")
    return problems


def measure(binary: Path, workdir: Path, arm: Arm, workload: Workload, files: dict[str, Path],
            jwks: str, args: argparse.Namespace, round_no: int) -> Run:
    session = workload.mode == login_arms.MODE
    outbound_key = outbound_arms.arm_key(arm.key, workload.key)
    envoy = SESSION.start(binary, workdir, arm.key, args.pin) if session else \
        start_envoy(binary, workdir, arm_filters(arm.key, jwks, workload), 1, args.pin,
                    resources=outbound_arms.resources(outbound_key))
    try:
        assert envoy.port is not None and envoy.proc is not None
        pid = envoy.proc.pid
        warm_problems = []
        timed_args = SESSION.lua_args(arm.key) if session else lua_args(workload, files)
        if session:
            # Once its keys are in (mesh-oauth fetches them), the session's own requests warm up.
            SESSION.ready(envoy, arm.key)
            wrk(envoy.port, args.warmup, args.connections, timed_args, args.pin)
        elif workload.mode == "dpop":
            # The DPoP token with the warm-up's own proofs: none of them is in the timed pool.
            warmed = wrk(envoy.port, args.warmup, args.connections, lua_args(workload, files, warmup=True),
                         args.pin)
            warm_problems = [f"warm-up: {p}" for p in expected_refusals(workload, arm, warmed)]
        else:
            # Warm-up with the algorithm's repeated token, which is not in any pool.
            warm = Workload(workload.key, "", workload.alg, "repeat")
            wrk(envoy.port, args.warmup, args.connections, lua_args(warm, files), args.pin)
        # Requests still in Envoy when wrk stopped must not count in the timed window.
        time.sleep(0.2)
        hits_before = jwt_cache_hits(envoy) if arm.key == "C" else None
        outbound_before = outbound_arms.counters(envoy, outbound_key)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = cpu_ticks(pid)
        result = wrk(envoy.port, args.duration, args.connections, timed_args, args.pin)
        after = cpu_ticks(pid)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        problems = warm_problems + expected_refusals(workload, arm, result) \
            + outbound_arms.check(envoy, outbound_key, result["requests"], outbound_before)
        if envoy.proc.poll() is not None:
            problems.append(f"envoy exited with {envoy.proc.returncode}")
        if "panicked" in envoy.log():
            problems.append("the Wasm VM panicked (see envoy.log)")
        hits_after = jwt_cache_hits(envoy) if arm.key == "C" else None
    finally:
        envoy.stop()
    requests = max(result["requests"], 1)
    seconds = result["duration_us"] / 1e6
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime
               - children_before.ru_utime - children_before.ru_stime)
    return Run(
        round=round_no, workload=workload.key, arm=arm.key,
        rps=result["requests"] / seconds,
        p50_us=result["p50_us"], p99_us=result["p99_us"],
        cpu_us_per_req=(after - before) / CLK_TCK * 1e6 / requests,
        requests=result["requests"], non_2xx=result["non_2xx"],
        errors=result["connect_errors"] + result["read_errors"] + result["write_errors"] + result["timeouts"],
        pool_tokens_used=result["pool_tokens_used"], pool_wraps=result["pool_wraps"],
        jwt_cache_hits=None if hits_after is None or hits_before is None else hits_after - hits_before,
        envoy_cpu_pct=100 * (after - before) / CLK_TCK / seconds, wrk_cpu_pct=100 * wrk_cpu / seconds,
        problems=problems,
    )


def memory(binary: Path, workdir: Path, files: dict[str, Path], jwks: str,
           args: argparse.Namespace) -> tuple[dict[str, dict[int, int]], dict[str, dict[int, int]]]:
    """Envoy's RSS with 1 and 4 workers (each worker runs its own Wasm VM) after enough unique
    tokens that every worker's token cache is full, however unevenly the kernel spreads the
    connections over the workers: a 1 s probe gives the rate, a second run the rest. EdDSA
    because it verifies fastest in Wasm; a cache entry is the same size for any algorithm.
    Returns RSS and the requests each Envoy served, by arm and worker count."""
    rss: dict[str, dict[int, int]] = {}
    served: dict[str, dict[int, int]] = {}
    pool = Workload("mem", "", "EdDSA", "pool")
    for arm in ("A", "D", "E"):
        rss[arm], served[arm] = {}, {}
        for concurrency in (1, 4):
            envoy = start_envoy(binary, workdir / f"mem-{arm}-{concurrency}", arm_filters(arm, jwks),
                                concurrency, args.pin)
            try:
                assert envoy.port is not None and envoy.proc is not None
                target = 4 * concurrency * CACHE_SIZE
                probe = wrk(envoy.port, 1, args.connections, lua_args(pool, files), args.pin)["requests"]
                total = probe
                if probe < target:
                    seconds = min(args.memory_traffic, -(-target // max(probe, 1)) + 1)
                    total = wrk(envoy.port, seconds, args.connections, lua_args(pool, files),
                                args.pin)["requests"]
                time.sleep(0.3)
                rss[arm][concurrency] = rss_bytes(envoy.proc.pid)
                served[arm][concurrency] = total
            finally:
                envoy.stop()
    return rss, served


# --------------------------------------------------------------------------- micro-benchmarks


def micro(args: argparse.Namespace) -> list[dict[str, Any]]:
    log("micro-benchmarks (criterion)")
    bench = subprocess.run(["cargo", "bench", "--no-default-features", "--bench", "core", "--", "--warm-up-time", str(args.micro_warmup),
                            "--measurement-time", str(args.micro_time), "--noplot"],
                           cwd=REPO, text=True, capture_output=True)
    if bench.returncode != 0:
        raise RuntimeError(f"cargo bench failed:\n{bench.stdout}\n{bench.stderr}")
    meta = json.loads(run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                          capture_output=True).stdout)
    results = []
    for bench_file in sorted(Path(meta["target_directory"], "criterion").glob("**/new/benchmark.json")):
        estimates = json.loads((bench_file.parent / "estimates.json").read_text())
        name = json.loads(bench_file.read_text())["full_id"]
        results.append({"name": name, "median_ns": estimates["median"]["point_estimate"],
                        "mean_ns": estimates["mean"]["point_estimate"]})
    return results


# --------------------------------------------------------------------------- Wasm side in V8


def hotpath(files: dict[str, Path], jwks: str, workdir: Path) -> list[dict[str, Any]]:
    """The Wasm side of one cached request in V8 without Envoy (bench/hotpath.mjs), for the
    empty filter and mesh-oauth: what the module itself costs and how many host calls it makes."""
    log("Wasm side of a cached and of a first-seen request in V8 (node bench/hotpath.mjs)")
    workdir.mkdir(parents=True, exist_ok=True)
    fixture = workdir / "hotpath.json"
    plugin = json.loads(arm_filters("E", jwks)[0]["typed_config"]["config"]["configuration"]["value"])
    token = files["RS256.repeat"].read_text().strip()
    fixture.write_text(json.dumps({"config": json.dumps(plugin), "token": token}))
    results = []
    modules = [("E", MODULE)] + ([("F", BASELINE_MODULE)] if BASELINE_MODULE else [])
    # The empty filter and its floor arms, each with its steps (its plugin configuration).
    floors = [("D", "")] + [(arm, steps) for arm, (_, steps) in FLOOR_ARMS.items()]
    cached = [(arm, EMPTY_FILTER, workdir / f"hotpath-{arm}.json") for arm, _ in floors] \
        + [(arm, module, fixture) for arm, module in modules]
    for (arm, steps), (_, _, path) in zip(floors, cached):
        path.write_text(json.dumps({"config": steps, "token": token}))
    for arm, module, path in cached:
        out = run(["node", str(BENCH / "hotpath.mjs"), str(module), str(path), "20000", "10"],
                  capture_output=True).stdout
        results.append({"arm": arm, **json.loads(out.strip().splitlines()[-1])})
    # First-seen tokens (more than the token cache holds, each sent in turn), the signature
    # answered by Node's OpenSSL through the same foreign function Envoy serves: the module's
    # own work is the time less what the stand-in spent verifying.
    for alg in HOST_ALGS:
        pool = files[f"{alg}.pool"].read_text().split()[:FIRST_SEEN_POOL]
        first_seen = workdir / f"first-seen-{alg}.json"
        first_seen.write_text(json.dumps({"config": json.dumps(plugin), "token": pool[0], "tokens": pool,
                                          "host_verifies": True}))
        # With a baseline, E and F take turns, so that a busy spell weighs on both.
        rounds: dict[str, list[dict[str, Any]]] = {arm: [] for arm, _ in modules}
        for _ in range(3):
            for arm, module in modules:
                out = run(["node", str(BENCH / "hotpath.mjs"), str(module), str(first_seen), "4000", "5"],
                          capture_output=True).stdout
                rounds[arm].append(json.loads(out.strip().splitlines()[-1]))
        for arm, measured in rounds.items():
            best = min(measured, key=lambda r: r["min_us"] - r["host_verify_us"])
            results.append({"arm": arm, "first_seen": alg, **best})
    # The outbound workload's cached requests (issue 29): O and X, and F as O's baseline.
    if f"{outbound_arms.WORKLOAD_KEY}.repeat" in files:  # the outbound workload runs
        user = files[f"{outbound_arms.WORKLOAD_KEY}.repeat"].read_text().strip()
        outbound_modules = [("O", "O", MODULE), ("X", "X", MODULE)] \
            + ([("F", outbound_arms.BASELINE_OF, BASELINE_MODULE)] if BASELINE_MODULE else [])
        for arm, config_of, module in outbound_modules:
            fixture = workdir / f"hotpath-outbound-{arm}.json"
            fixture.write_text(json.dumps(outbound_arms.hotpath_fixture(config_of, user)))
            out = run(["node", str(BENCH / "hotpath.mjs"), str(module), str(fixture), "20000", "10"],
                      capture_output=True).stdout
            results.append({"arm": arm, "outbound": True, **json.loads(out.strip().splitlines()[-1])})
    return results


# --------------------------------------------------------------------------- policy size

# Signed by the host (Envoy's BoringSSL, here Node's OpenSSL) for the first-seen V8 runs; a pool
# large enough that no timed request finds its token cached: the cache admits, once full, a token
# seen twice, so a token must come back only after the cache forgot its first sighting (see the
# warm-up in hotpath.mjs). 30,000: the default RSA pool.
HOST_ALGS = ["RS256", "ES256"]
FIRST_SEEN_POOL = 30000

POLICY_SIZES = [10, 100, 1000, 10000]
LOAD_PROVIDERS = 50


def gateway_rules(count: int) -> list[dict[str, Any]]:
    """What a large gateway has: per service a prefix with methods and a host, an exact admin
    path denied, a public health path; the request under test hits the last service."""
    rules: list[dict[str, Any]] = []
    services = max(1, count // 3)
    for i in range(services):
        host = f"svc{i % 50}.example.com"
        rules.append({"name": f"svc{i}-admin", "match": {"paths": [f"/svc{i}/admin"]}, "deny": True})
        rules.append({"name": f"svc{i}-health", "match": {"paths": [f"/svc{i}/healthz"], "methods": ["GET"]},
                      "allowAnonymous": True})
        rules.append({"name": f"svc{i}", "match": {"paths": [f"/svc{i}/*"], "methods": ["GET", "POST"],
                                                 "hosts": [host]}, "requires": {}})
    while len(rules) < count:
        rules.insert(0, {"name": f"static{len(rules)}", "match": {"paths": [f"/static{len(rules)}/*", "*.css"]},
                         "allowAnonymous": True})
    return rules[:count] if len(rules) > count else rules


def policy_scale(files: dict[str, Path], jwks: str, workdir: Path) -> list[dict[str, Any]]:
    """The module's per-request time in V8 (bench/hotpath.mjs) with 10 to 10,000 rules, the
    request matching the last service's rule (a plain scan's worst case); and the load of the
    largest configuration with 50 providers: time and linear memory of one VM."""
    log("policy size: the module with 10 to 10,000 rules (node bench/hotpath.mjs)")
    workdir.mkdir(parents=True, exist_ok=True)
    token = files["RS256.repeat"].read_text().strip()
    results = []
    for count in POLICY_SIZES + ["load"]:
        rules = gateway_rules(POLICY_SIZES[-1] if count == "load" else count)
        providers = [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}]
        if count == "load":
            providers += [{"issuer": f"https://idp{i}.example.com", "jwksUri": f"https://idp{i}.example.com/jwks"}
                          for i in range(1, LOAD_PROVIDERS)]
        last = max(i for i, r in enumerate(rules) if r["name"].startswith("svc") and "-" not in r["name"])
        service = rules[last]["name"]
        fixture = workdir / f"policy-{count}.json"
        fixture.write_text(json.dumps({
            "config": json.dumps({"providers": providers, "rules": rules, "unmatched": "deny"}),
            "token": token, "path": f"/{service}/items", "method": "GET",
            "authority": rules[last]["match"]["hosts"][0]}))
        out = run(["node", str(BENCH / "hotpath.mjs"), str(MODULE), str(fixture), "5000", "7"],
                  capture_output=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        results.append({"rules": len(rules), "providers": len(providers), "load": count == "load", **result})
        log(f"  {len(rules):>6} rules, {len(providers):>2} providers: {result['min_us']:.2f} µs/request, "
            f"configure {result['configure_ms']:.1f} ms, memory {result['memory_configured'] / MIB:.1f} MiB")
    return results


# --------------------------------------------------------------------------- analysis


def ran(runs: list[Run]) -> list[Workload]:
    return [w for w in WORKLOADS if any(r.workload == w.key for r in runs)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def runs_of(runs: list[Run], workload: str, arm: str) -> list[Run]:
    return [r for r in runs if r.workload == workload and r.arm == arm and not r.problems]


def stat(runs: list[Run], workload: str, arm: str, pick: Callable[[Run], float]) -> float:
    return median([pick(r) for r in runs_of(runs, workload, arm)])


def ratio(runs: list[Run], workload: str, num: str, den: str, by_cpu: bool = False,
          den_workload: str | None = None) -> float:
    """Throughput ratio num/den: the median over rounds of each round's own ratio, so a round
    slowed by the machine counts once, for both arms. `by_cpu`: the same from Envoy's
    CPU-µs per request (den's cost over num's), which other work on Envoy's core disturbs less.
    `den_workload`: den's runs of another workload (same round), e.g. DPoP vs plain bearer.
    No runs of either arm (an arm a workload does not run): NaN."""
    return median(round_ratios(runs, workload, num, den, by_cpu, den_workload))


def round_ratios(runs: list[Run], workload: str, num: str, den: str, by_cpu: bool = False,
                 den_workload: str | None = None) -> list[float]:
    """Each round's own ratio num/den (see `ratio`), in round order."""
    per_round = []
    for round_no in sorted({r.round for r in runs}):
        a = [r for r in runs_of(runs, workload, num) if r.round == round_no]
        b = [r for r in runs_of(runs, den_workload or workload, den) if r.round == round_no]
        if not (a and b):
            continue
        x, y = (b[0].cpu_us_per_req, a[0].cpu_us_per_req) if by_cpu else (a[0].rps, b[0].rps)
        if y > 0:
            per_round.append(x / y)
    return per_round


@dataclass
class Target:
    name: str
    value: float
    goal: str
    met: bool | None  # None: report only, or not measurable
    by_cpu: float = float("nan")  # the same ratio from CPU-µs per request, as a cross-check
    rounds: list[float] = field(default_factory=list)  # each round's throughput ratio


# Criterion benchmarks (benches/core.rs) of the DPoP proof check, reported with the DPoP target.
DPOP_MICRO = {
    "sender/dpop_proof/ES256": "DPoP proof check alone, native (criterion sender/dpop_proof/ES256), µs",
    "authorize/dpop_cache_hit/ES256": "DPoP request with the token cached, native "
                                      "(criterion authorize/dpop_cache_hit/ES256), µs",
}


def added_cpu(runs: list[Run], workload: str, arm: str, base: str) -> list[float]:
    """Per round, arm's Envoy CPU-µs per request minus base's, in the same workload."""
    per_round = []
    for round_no in sorted({r.round for r in runs}):
        a = [r for r in runs_of(runs, workload, arm) if r.round == round_no]
        b = [r for r in runs_of(runs, workload, base) if r.round == round_no]
        if a and b:
            per_round.append(a[0].cpu_us_per_req - b[0].cpu_us_per_req)
    return per_round


# The floor's parts as CPU-µs/req differences of two arms of one workload: (what, workload, arm, base).
FLOOR_PARTS = [
    ("a Wasm filter that makes no host call over no filter", "repeat", "W", "A"),
    ("one value read and one removal over no host call", "repeat", "D", "W"),
    ("the whole-map read over one value read", "repeat", "K", "D"),
    ("six value reads over one", "repeat", "L", "D"),
    ("two map-size reads (the size check) over none", "repeat", "S", "D"),
    ("the clock and the 1 % audit line", "repeat", "M", "K"),
    ("mesh-oauth's own work in the module", "repeat", "E", "M"),
    ("all mesh-oauth adds to the empty filter", "repeat", "E", "D"),
    ("outbound: O's host calls over the empty filter's", outbound_arms.WORKLOAD_KEY, "P", "D"),
    ("outbound: mesh-oauth's own work in the module", outbound_arms.WORKLOAD_KEY, "O", "P"),
    ("outbound: the native injector over no filter", outbound_arms.WORKLOAD_KEY, "N", "A"),
    ("outbound: the empty filter over no filter", outbound_arms.WORKLOAD_KEY, "D", "A"),
]


def targets(runs: list[Run], module_bytes: int, extra_rss: float | None,
            micro_results: list[dict[str, Any]] | None = None) -> list[Target]:
    """`micro_results` None: the micro-benchmarks were skipped (said so in the DPoP rows)."""
    def at_least(name: str, workload: str, den: str, bound: float | None, den_workload: str | None = None,
                 num: str = "E") -> Target:
        """`bound` None: the ratio is reported, not judged."""
        value = ratio(runs, workload, num, den, den_workload=den_workload)
        return Target(name, value, "report" if bound is None else f"≥ {bound}×",
                      None if value != value or bound is None else value >= bound,
                      ratio(runs, workload, num, den, by_cpu=True, den_workload=den_workload),
                      round_ratios(runs, workload, num, den, den_workload=den_workload))

    p99 = {arm: stat(runs, "repeat", arm, lambda r: r.p99_us) for arm in "ABE"}
    added_e, added_b = p99["E"] - p99["A"], p99["B"] - p99["A"]
    # Below zero is noise: the filter cannot take latency away. jwt_authn adding none: no ratio.
    p99_ratio = max(added_e, 0) / added_b if added_b > 0 else float("nan")
    result = [
        at_least("repeated token vs jwt_authn (no cache)", "repeat", "B", 1.5),
        at_least("repeated token vs jwt_authn with cache", "repeat", "C", 0.75),
        at_least("repeated token vs empty Wasm filter", "repeat", "D", 0.9),
        # Issue 17's targets: at least as fast as the native filter on first-seen tokens.
        at_least("unique RS256 vs jwt_authn", "unique-RS256", "B", 1.0),
        at_least("unique ES256 vs jwt_authn", "unique-ES256", "B", 1.0),
        at_least("unique EdDSA vs jwt_authn", "unique-EdDSA", "B", 0.8),
        at_least("unique PS256 vs jwt_authn", "unique-PS256", "B", 0.5),
        Target(f"added p99 over no-auth vs jwt_authn's (repeated; {added_e:.0f} µs vs {added_b:.0f} µs)",
               p99_ratio, "≤ 1.5×", None if p99_ratio != p99_ratio else p99_ratio <= 1.5),
        at_least("DPoP ES256 (E, dpop-ES256) vs jwt_authn unique ES256 (B, unique-ES256)",
                 "dpop-ES256", "B", 0.6, den_workload="unique-ES256"),
        *(at_least(name, outbound_arms.WORKLOAD_KEY, "N", bound, num=num)
          for num, bound, name in outbound_arms.RATIO_TARGETS),
    ]
    # The floor decomposed (issue 30): what each part adds in Envoy, per round, and the
    # throughput a filter with mesh-oauth's host calls but no work of its own reaches (M ÷ D).
    result.append(at_least("repeated token: empty filter with mesh-oauth's host calls vs empty (M ÷ D)",
                           "repeat", "D", None, num="M"))
    result.append(at_least("repeated token: mesh-oauth vs empty filter with its host calls (E ÷ M)",
                           "repeat", "M", None))
    for label, workload, arm, base in FLOOR_PARTS:
        added = added_cpu(runs, workload, arm, base)
        result.append(Target(f"floor, CPU-µs/req in Envoy: {label} ({arm} − {base})", median(added), "report",
                             None, rounds=added))
    # What the proof costs: in Envoy, all mesh-oauth adds over the empty filter when the token
    # is cached (the proof check, the cache hit, the header removal); natively, criterion's.
    added = added_cpu(runs, "dpop-ES256", "E", "D")
    result.append(Target("DPoP in Envoy: mesh-oauth CPU-µs/req over the empty filter (dpop-ES256, E − D)",
                         median(added), "report", None, rounds=added))
    by_name = {m["name"]: m for m in micro_results or []}
    for name, label in DPOP_MICRO.items():
        if micro_results is None:
            label += " — micro-benchmarks skipped (--skip-micro)"
        elif name not in by_name:
            label += " — not in this criterion run"
        value = by_name[name]["median_ns"] / 1000 if name in by_name else float("nan")
        result.append(Target(label, value, "report", None))
    # No longer a cap (issue 17): each 10 % of growth is accounted for in the closing note.
    result.append(Target("module size (KiB)", module_bytes / 1024, "report", None))
    if extra_rss is not None:
        result.append(Target("extra RSS per worker VM (MiB)", extra_rss / MIB, "≤ 4 MiB", extra_rss <= 4 * MIB))
    return result


def verdict(target: Target) -> str:
    return {True: "MET", False: "NOT MET", None: "report"}[target.met] if target.value == target.value \
        else "no data"


def per_worker(rss: dict[int, int]) -> float:
    return (rss[4] - rss[1]) / 3


def baseline_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per workload that arm F ran: E and F medians and E ÷ F (throughput; and by CPU, F's
    CPU-µs/req over E's, so above 1 means E is faster by either measure), median and each round."""
    rows = []
    for w in ran(runs):
        if "F" not in w.arms:
            continue
        # "E" in the row: the arm F is compared with (O in the outbound workload).
        now = baseline_of(w.key)
        rows.append({
            "workload": w.key,
            "rps": {label: stat(runs, w.key, arm, lambda r: r.rps) for label, arm in (("E", now), ("F", "F"))},
            "cpu": {label: stat(runs, w.key, arm, lambda r: r.cpu_us_per_req)
                    for label, arm in (("E", now), ("F", "F"))},
            "ratio": ratio(runs, w.key, now, "F"), "rounds": round_ratios(runs, w.key, now, "F"),
            "ratio_cpu": ratio(runs, w.key, now, "F", by_cpu=True),
            "rounds_cpu": round_ratios(runs, w.key, now, "F", by_cpu=True),
        })
    return rows


def hotpath_pairs(hot: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """The V8 measurements of E and F side by side: (what, E µs, F µs); first-seen tokens by
    the module's own work (the stand-in's verify taken out)."""
    def own(h: dict[str, Any]) -> float:
        return h["min_us"] - h.get("host_verify_us", 0) if "first_seen" in h else h["min_us"]

    def name(h: dict[str, Any]) -> str:
        if h.get("outbound"):
            return "cached outbound clientCredentials request (O)"
        return f"first-seen {h['first_seen']}, module's own work" if "first_seen" in h else "cached request"

    by = {(name(h), h["arm"]): own(h) for h in hot}
    now = ("E", outbound_arms.BASELINE_OF)
    return [(what, by[(what, arm)], by[(what, "F")]) for what, arm in by if arm in now and (what, "F") in by]


def share(e: float, f: float) -> float:
    """E ÷ F of two V8 times; none when either is not above zero (a first-seen run's own work,
    the time less the stand-in's mean verify, can come out at or below zero on a busy machine)."""
    return e / f if e > 0 and f > 0 else float("nan")


# --------------------------------------------------------------------------- output


def fmt(value: float, digits: int = 0) -> str:
    return "–" if value != value else f"{value:,.{digits}f}"


def write_report(path: Path, runs: list[Run], tgts: list[Target], rss: dict[str, dict[int, int]] | None,
                 served: dict[str, dict[int, int]] | None, micro_results: list[dict[str, Any]],
                 hot: list[dict[str, Any]], context: dict[str, Any],
                 scale: list[dict[str, Any]] | None = None, sections: list[str] | None = None) -> None:
    """`sections`: more report lines (the session workload's), after the workload tables."""
    lines = ["# mesh-oauth benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "Medians over rounds. Ratios are per-round throughput ratios, median over rounds. "
              "CPU-µs/req: Envoy's utime+stime over the timed window ÷ requests.", ""]
    lines += ["## Targets", "", "| target | value | goal | verdict | from CPU-µs/req | each round |",
              "| --- | ---: | --- | --- | ---: | --- |"]
    for t in tgts:
        each = " ".join(fmt(r, 2) for r in t.rounds) or "–"
        lines.append(f"| {t.name} | {fmt(t.value, 2)} | {t.goal} | {verdict(t)} | {fmt(t.by_cpu, 2)} | {each} |")
    lines += ["", "Verdicts use throughput. The last column is the same ratio from Envoy's CPU cost "
              "per request; on a quiet machine (Envoy CPU % near 100) the two agree."]
    if BASELINE_MODULE is not None:
        lines += ["", "## mesh-oauth ÷ baseline (E ÷ F)", "",
                  f"Arm F is arm E's configuration with the baseline module "
                  f"(`{context.get('baseline', '')}`), run right after E in every round (in the outbound "
                  "workload: arm O's, right after O, and E in the table is O). E ÷ F above 1: "
                  "the current module is faster; by CPU: F's CPU-µs/req ÷ E's, the same sense. The noise "
                  "is the spread of the rounds' ratios (E and F run back to back, so a busy spell "
                  "mostly hits both).", "",
                  "| workload | E req/s | F req/s | E ÷ F | each round | E CPU-µs/req | F CPU-µs/req "
                  "| E ÷ F by CPU | each round |",
                  "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for b in baseline_rows(runs):
            each, each_cpu = (" ".join(fmt(r, 2) for r in b[k]) or "–" for k in ("rounds", "rounds_cpu"))
            lines.append(f"| {b['workload']} | {fmt(b['rps']['E'])} | {fmt(b['rps']['F'])} "
                         f"| {fmt(b['ratio'], 2)} | {each} | {fmt(b['cpu']['E'], 1)} | {fmt(b['cpu']['F'], 1)} "
                         f"| {fmt(b['ratio_cpu'], 2)} | {each_cpu} |")
        pairs = hotpath_pairs(hot)
        if pairs:
            lines += ["", "In V8 without Envoy (`bench/hotpath.mjs`, as in the section below; µs per request, "
                      "lower is better):", "", "| measurement | E µs | F µs | E − F µs | E ÷ F |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {what} | {e:.2f} | {f:.2f} | {e - f:+.2f} | {fmt(share(e, f), 2)} |" for what, e, f in pairs]
    dpop = WORKLOAD["dpop-ES256"]
    if dpop in ran(runs):
        lines += ["", "## DPoP (issue 17)", "",
                  f"One DPoP-bound ES256 token (`cnf.jkt`), a fresh ES256 proof per request "
                  f"(`Authorization: DPoP`, `DPoP` header; `htm` GET, `htu` {DPOP_HTU}, `ath`), each "
                  f"proof sent once; arm E has `dpop: required`, `maxAgeSeconds` {DPOP_MAX_AGE_S}, "
                  f"`limits.maxDpopProofs` {DPOP_LIMITS.get('maxDpopProofs', 0):,}. The token verifies "
                  "once and is cached: what E pays per request is the proof (an ES256 signature, "
                  "its claims, the thumbprint, the replay memory). jwt_authn cannot check a proof, so "
                  "the target compares E here with B on unique plain ES256 bearer tokens (one ES256 "
                  "signature per request too), per round. Arms run: "
                  + ", ".join(f"{a.key} {a.label}" for a in dpop.arm_list) + "."]
        if not micro_results:
            lines += ["", "The native cost of the proof check alone (criterion `sender/dpop_proof/ES256`) "
                      "is not measured in this run: micro-benchmarks skipped (--skip-micro)."]
        else:
            lines += ["", "Native (criterion, median): "
                      + "; ".join(f"`{m['name']}` {m['median_ns'] / 1000:.2f} µs" for m in micro_results
                                  if m["name"] in DPOP_MICRO) + "."]
    for workload in ran(runs):
        arms = workload.arm_list
        lines += ["", f"## {workload.label}", ""]
        if len(arms) < len(ARMS):
            lines += [f"Arms {', '.join(a.key for a in ARMS if a not in arms)} do not run this workload.", ""]
        lines += ["| arm | req/s | p50 µs | p99 µs | CPU-µs/req | E ÷ arm | E ÷ arm by CPU | Envoy CPU % "
                  "| wrk CPU % | pool wraps | rounds |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for arm in arms:
            good = runs_of(runs, workload.key, arm.key)
            wraps = max((r.pool_wraps for r in good), default=0)
            lines.append(
                f"| {arm.key} {arm.label} | {fmt(stat(runs, workload.key, arm.key, lambda r: r.rps))} "
                f"| {fmt(stat(runs, workload.key, arm.key, lambda r: r.p50_us))} "
                f"| {fmt(stat(runs, workload.key, arm.key, lambda r: r.p99_us))} "
                f"| {fmt(stat(runs, workload.key, arm.key, lambda r: r.cpu_us_per_req), 1)} "
                f"| {fmt(ratio(runs, workload.key, 'E', arm.key), 2)} "
                f"| {fmt(ratio(runs, workload.key, 'E', arm.key, by_cpu=True), 2)} "
                f"| {fmt(stat(runs, workload.key, arm.key, lambda r: r.envoy_cpu_pct))} "
                f"| {fmt(stat(runs, workload.key, arm.key, lambda r: r.wrk_cpu_pct))} | {wraps} | {len(good)} |")
        lines += ["", "Throughput ratio row ÷ column:", "",
                  "| | " + " | ".join(a.key for a in arms) + " |", "| --- |" + " ---: |" * len(arms)]
        for row in arms:
            cells = [fmt(ratio(runs, workload.key, row.key, col.key), 2) for col in arms]
            lines.append(f"| {row.key} | " + " | ".join(cells) + " |")
        hits = [r.jwt_cache_hits for r in runs_of(runs, workload.key, "C") if r.jwt_cache_hits is not None]
        if hits:
            lines.append(f"\njwt_authn cache hits in C's timed windows (per round): {hits}")
    lines += sections or []
    problems = [r for r in runs if r.problems]
    if problems:
        lines += ["", "## Runs left out", ""]
        lines += [f"- round {r.round} {r.workload} {r.arm}: {'; '.join(r.problems)}" for r in problems]
    if rss:
        lines += ["", "## Resident memory (Envoy VmRSS after traffic, MiB)", "",
                  "| arm | 1 worker | 4 workers | per extra worker | requests before (1 / 4 workers) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for arm, values in rss.items():
            counts = served[arm] if served else {1: 0, 4: 0}
            lines.append(f"| {arm} {ARM[arm].label} | {values[1] / MIB:.1f} | {values[4] / MIB:.1f} "
                         f"| {per_worker(values) / MIB:.2f} | {counts[1]:,} / {counts[4]:,} |")
        lines.append(f"\nExtra per worker VM = (per extra worker with the filter) − (per extra worker "
                     f"without any filter). Traffic: unique EdDSA tokens, aiming at "
                     f"{4 * CACHE_SIZE:,} per worker so that every worker's token cache is full.")
    if micro_results:
        lines += ["", "## Native micro-benchmarks (criterion, median)", "", "| benchmark | µs |",
                  "| --- | ---: |"]
        lines += [f"| {m['name']} | {m['median_ns'] / 1000:.2f} |" for m in micro_results]
    if hot:
        lines += ["", "## The Wasm side of a cached request, in V8 without Envoy", "",
                  "`bench/hotpath.mjs`: Node's V8 runs the module against a stand-in host that answers "
                  "from memory, replaying the repeated-token request (minimum over 10 × 20,000). What "
                  "Envoy adds per host call is not in these numbers: it is the rest of the gap above.", "",
                  "| arm | µs per request | host calls per request |", "| --- | ---: | --- |"]
        cached = [h for h in hot if "first_seen" not in h]
        first_seen = [h for h in hot if "first_seen" in h]
        outbound_label = (lambda h: f" (outbound, {ARM[outbound_arms.BASELINE_OF].label}'s configuration)"
                          if h.get("outbound") and h["arm"] == "F" else " (outbound)" if h.get("outbound") else "")
        lines += [f"| {h['arm']} {ARM[h['arm']].label}{outbound_label(h)} | {h['min_us']:.2f} | "
                  + ", ".join(f"{k} {v:g}" for k, v in h["host_calls"].items()) + " |" for h in cached]
        if first_seen:
            lines += ["", f"First-seen tokens ({FIRST_SEEN_POOL:,} unique ones in turn, more than the token "
                      "cache holds, each seen once before), the signature answered through the `verify_signature` foreign function "
                      "by Node's OpenSSL, as Envoy answers it with BoringSSL (keys imported once by the "
                      "stand-in); the module's own work is the request's time less the stand-in's verify "
                      "(best of 3 runs of 5 × 4,000):", "",
                      "| token | µs per request | of which the host's verify | module's own work µs |",
                      "| --- | ---: | ---: | ---: |"]
            # With a baseline each token has a row per module: name the arm.
            arm_of = (lambda h: f" ({h['arm']} {ARM[h['arm']].label})") if BASELINE_MODULE else (lambda h: "")
            lines += [f"| unique {h['first_seen']}{arm_of(h)} | {h['min_us']:.2f} | {h['host_verify_us']:.2f} "
                      f"| {h['min_us'] - h['host_verify_us']:.2f} |" for h in first_seen]
    if scale:
        base = next((p["min_us"] for p in scale if p["rules"] == POLICY_SIZES[0] and not p["load"]), float("nan"))
        lines += ["", "## Policy size and configuration load (the module in V8, without Envoy)", "",
                  "`bench/hotpath.mjs` with gateway-like rules (per service an exact admin path denied, a "
                  "public health path, a prefix with methods and a host); the request matches the last "
                  "service's rule, a plain scan's worst case. Target: 1,000 rules ≤ 1.2× 10 rules; the "
                  f"largest configuration with {LOAD_PROVIDERS} providers loads in ≤ 200 ms per VM.", "",
                  "| rules | providers | µs per request | × 10 rules | configuration load, ms | VM linear memory, MiB |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {p['rules']:,} | {p['providers']} | {p['min_us']:.2f} | {p['min_us'] / base:.2f} | "
                  f"{p['configure_ms']:.1f} | {p['memory_after'] / MIB:.1f} |" for p in scale]
    lines += ["", "## Notes", "",
              "- Unique-token pools are walked once per run from the start; a wrap (column "
              "`pool wraps`) reuses tokens only after the whole pool, which is larger than both "
              f"token caches ({CACHE_SIZE} entries, evicting oldest/least recently used first): a "
              "wrapped pool still never hits a cache.",
              "- Arms A and D do not look at the token; their unique-token runs are the floor for "
              "that token size.",
              "- The mix: odd requests carry the repeated valid RS256 token, even ones a unique "
              "RS256 token with a corrupted signature (full verification, then 401).",
              "- DPoP: the warm-up sends proofs of its own pool, the timed window proofs of another, "
              "each from its start; each run's Envoy is fresh (empty replay memory), so no proof is "
              "ever a replay unless a pool wraps, which is a problem (run left out). "
              "`maxDpopProofs` is several times the proofs minted, so that no 16-proof slot of the "
              "replay memory fills up (503).",
              "- Envoy CPU % is Envoy's share of its core over the timed window: well below 100 % "
              "means other work ran on that core (noisy numbers) or the load generator was the "
              "limit (then wrk CPU % is near 100).",
              "- Micro-benchmarks are native, built with the release profile the module uses.",
              "- `runs.json` holds every run of every round."]
    path.write_text("\n".join(lines) + "\n")


def write_chart(path: Path, runs: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    width = 0.8 / len(ARMS)
    workloads = ran(runs)
    for i, arm in enumerate(ARMS):
        # Only the workloads this arm runs (the DPoP workload has no jwt_authn arms).
        present = [n for n, w in enumerate(workloads) if arm.key in w.arms]
        if not present:
            continue
        xs = [n + (i - (len(ARMS) - 1) / 2) * width for n in present]
        for ax, pick in ((axes[0], lambda r: r.rps), (axes[1], lambda r: r.cpu_us_per_req)):
            values = [[pick(r) for r in runs_of(runs, workloads[n].key, arm.key)] for n in present]
            mids = [median(v) if v else 0 for v in values]
            low = [m - min(v) if v else 0 for m, v in zip(mids, values)]
            high = [max(v) - m if v else 0 for m, v in zip(mids, values)]
            ax.bar(xs, mids, width, yerr=[low, high], capsize=2, label=f"{arm.key} {arm.label}")
    axes[0].set_ylabel("requests/s (median, min–max)")
    axes[1].set_ylabel("Envoy CPU-µs per request")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].set_xticks(range(len(workloads)), [w.key for w in workloads])
    axes[0].legend(ncol=len(ARMS), fontsize=8, loc="upper right")
    axes[0].set_title("mesh-oauth vs jwt_authn vs the empty Wasm filter (one Envoy worker, one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(runs: list[Run], tgts: list[Target], hot: list[dict[str, Any]] | None = None) -> None:
    width = max(18, *(len(a.key + a.label) + 2 for a in ARMS))
    for title, pick, digits in (("req/s", lambda r: r.rps, 0), ("Envoy CPU-µs/req", lambda r: r.cpu_us_per_req, 1)):
        print(f"\n== {title} (median; n/a: the arm does not run the workload) ==")
        print(f"{'workload':<14}" + "".join(f"{a.key + ' ' + a.label:>{width}}" for a in ARMS))
        for w in ran(runs):
            print(f"{w.key:<14}" + "".join(
                f"{fmt(stat(runs, w.key, a.key, pick), digits) if a.key in w.arms else 'n/a':>{width}}"
                for a in ARMS))
    if BASELINE_MODULE is not None:
        print("\n== mesh-oauth ÷ baseline (E ÷ F, above 1: E faster; median [each round]) ==")
        print(f"{'workload':<14}{'by req/s':>10}  {'rounds':<30}{'by CPU-µs/req':>14}  rounds")
        for b in baseline_rows(runs):
            each, each_cpu = (" ".join(fmt(r, 2) for r in b[k]) for k in ("rounds", "rounds_cpu"))
            print(f"{b['workload']:<14}{fmt(b['ratio'], 2):>10}  {'[' + each + ']':<30}"
                  f"{fmt(b['ratio_cpu'], 2):>14}  [{each_cpu}]")
        for what, e, f in hotpath_pairs(hot or []):
            print(f"  V8 {what}: E {e:.2f} µs, F {f:.2f} µs (E ÷ F {fmt(share(e, f), 2)})")
    problems = [r for r in runs if r.problems]
    print(f"\n== runs with problems (left out): {len(problems)} ==")
    for r in problems:
        print(f"  round {r.round} {r.workload} {r.arm}: {'; '.join(r.problems)}")
    print("\n== targets ==")
    for t in tgts:
        cpu = f"; {fmt(t.by_cpu, 2)} from CPU-µs/req" if t.by_cpu == t.by_cpu else ""
        print(f"  {verdict(t):<8} {t.name}: {fmt(t.value, 2)} (goal {t.goal}{cpu})")


# --------------------------------------------------------------------------- main


def machine_context(args: argparse.Namespace, binary: Path, module_bytes: int, empty_bytes: int) -> dict[str, Any]:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    version = subprocess.run([str(binary), "--version"], text=True, capture_output=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.release()}",
        "load average at start": Path("/proc/loadavg").read_text().split()[0],
        "envoy": version.split("version:")[-1].strip() if version else str(binary),
        "setup": (f"--concurrency 1 pinned to CPU {ENVOY_CPU}, wrk -t1 -c{args.connections} on CPU "
                  f"{LOAD_CPU}" if args.pin else "not pinned (fewer than 2 CPUs)")
                 + f", {args.warmup} s warm-up + {args.duration} s per run, {args.rounds} rounds "
                 f"({max(args.rounds, args.repeat_rounds)} for the repeated token)",
        "module": f"{module_bytes:,} bytes ({module_bytes / 1024:.1f} KiB); empty filter {empty_bytes:,} bytes",
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=2, help="timed seconds per run (wrk takes whole seconds)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up seconds per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat-rounds", type=int, default=5,
                   help="rounds for the repeated-token workload, whose ratio to the empty Wasm filter "
                        "is the closest call: more paired rounds steady its median")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--pool-rsa", type=int, default=30_000, help="unique RS256 and PS256 tokens each")
    p.add_argument("--pool-ec", type=int, default=60_000, help="unique ES256 and EdDSA tokens each")
    p.add_argument("--pool-dpop", type=int, default=None,
                   help=f"DPoP proofs for the timed runs (default {DPOP_PROOFS_PER_S:,} per --duration "
                        "second: more than the fastest arm sends, since a wrapped proof is a replay)")
    p.add_argument("--pool-dpop-warmup", type=int, default=None,
                   help=f"DPoP proofs for the warm-ups, apart from the timed ones (default "
                        f"{DPOP_PROOFS_PER_S:,} per --warmup second)")
    p.add_argument("--memory-traffic", type=int, default=5,
                   help="at most this many seconds of traffic before reading RSS")
    p.add_argument("--micro-time", type=float, default=1.0, help="criterion measurement seconds")
    p.add_argument("--micro-warmup", type=float, default=0.5, help="criterion warm-up seconds")
    p.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS))
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--skip-micro", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-hotpath", action="store_true", help="skip the V8-without-Envoy measurement")
    p.add_argument("--skip-policy", action="store_true", help="skip the policy size and configuration load measurement")
    p.add_argument("--login-flows", type=int, default=30,
                   help="session workload: real logins per configuration for the callback and refresh "
                        "latency (0: not measured)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--mesh-limits", type=json.loads, default={},
                   help='plugin "limits" for mesh-oauth, e.g. \'{"maxCachedTokens": 0}\' to measure without the cache')
    p.add_argument("--baseline-wasm", type=Path, default=None, metavar="PATH",
                   help="adds arm F, mesh-oauth (baseline): arm E's configuration with the module at PATH "
                        "(e.g. built from an earlier commit; `make bench-baseline REF=<git ref>` builds one), "
                        "run right after E in every round of every workload E runs, and in the V8 hot "
                        "path; the report and the summary add E ÷ F per workload, each round. Not built "
                        "or changed by this script")
    outbound_arms.add_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help="about half the time: 2 rounds (3 for the repeated token), 1 s timed runs, shorter "
                        "micro-benchmarks; ratios scatter more")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.repeat_rounds, args.duration = 2, 3, 1
        args.micro_time, args.micro_warmup = 0.5, 0.2
        args.login_flows = min(args.login_flows, 10)
    outbound_arms.settle_arguments(args)
    unknown = set(args.workloads.split(",")) - set(WORKLOAD)
    if unknown:
        p.error(f"unknown workloads {', '.join(sorted(unknown))}; known: {', '.join(WORKLOAD)}")
    if args.baseline_wasm is not None:
        args.baseline_wasm = args.baseline_wasm.resolve()
        if not args.baseline_wasm.is_file():
            p.error(f"--baseline-wasm: no file {args.baseline_wasm}")
    if args.pool_dpop is None:
        args.pool_dpop = DPOP_PROOFS_PER_S * args.duration
    if args.pool_dpop_warmup is None:
        args.pool_dpop_warmup = DPOP_PROOFS_PER_S * max(args.warmup, 1)
    return args


def main() -> int:
    args = parse_args()
    MESH_LIMITS.update(args.mesh_limits)
    if args.baseline_wasm is not None:
        enable_baseline(args.baseline_wasm)
    started = time.monotonic()
    args.pin = len(os.sched_getaffinity(0)) >= 2 and {ENVOY_CPU, LOAD_CPU} <= os.sched_getaffinity(0)
    workloads = [w for w in WORKLOADS if w.key in args.workloads.split(",")]
    rounds_of = {w.key: max(args.rounds, args.repeat_rounds) if w.key == "repeat" else args.rounds
                 for w in workloads}
    runs_total = sum(rounds_of[w.key] * len(w.arms) for w in workloads)
    # Per run: Envoy start and stop, about 1 s. Memory: six Envoys. Micro: 12 benchmarks.
    estimate = runs_total * (args.warmup + args.duration + 1.0) \
        + (0 if args.skip_memory else 40) \
        + (0 if args.skip_micro else 12 * (args.micro_warmup + args.micro_time) + 20) \
        + (SESSION.seconds(args.login_flows) if SESSION.selected(workloads) else 0) \
        + (outbound_arms.lifetime_seconds(args) if WORKLOAD[outbound_arms.WORKLOAD_KEY] in workloads else 0)
    log(f"{runs_total} runs of {args.warmup}+{args.duration} s; about {estimate / 60:.1f} min once built "
        "(a fresh machine adds a few minutes of installing, building and token minting)")
    ensure_tools()
    micro_build = None if args.skip_build else build(with_micro=not args.skip_micro)
    if args.skip_build and not EMPTY_FILTER.exists():
        log("building the empty filter (missing; --skip-build skips only the module and the micro-benchmarks)")
        run(["cargo", "build", "--release", "--target", WASM_TARGET], cwd=EMPTY_FILTER_DIR)
    binary = locate_envoy()
    keys, files = token_files({"RS256": args.pool_rsa, "ES256": args.pool_ec, "EdDSA": args.pool_ec,
                               "PS256": args.pool_rsa})
    dpop_sizes = {"timed": args.pool_dpop, "warmup": args.pool_dpop_warmup}
    run_seconds = args.warmup + args.duration + 30  # one run, Envoy start and stop to spare
    if any(w.mode == "dpop" for w in workloads):
        DPOP_LIMITS["maxDpopProofs"] = dpop_memory(dpop_sizes)
        # Proofs that last the whole bench if the cache has that long left (else minted now);
        # before each DPoP run they are checked again, and re-minted if that run would outlive them.
        files.update(dpop_files(keys, dpop_sizes, min(estimate + 60, (DPOP_MAX_AGE_S - DPOP_MARGIN_S) / 2)))
    finish(micro_build)
    jwks = keys.jwks_string(ALGS)
    workdir = REPO / ".cache" / "bench" / "envoy"
    shutil.rmtree(workdir, ignore_errors=True)
    # The OP it starts ends with the bench at the latest (op.mjs stops when its stdin closes).
    if SESSION.selected(workloads):
        workloads = SESSION.prepare(binary, workdir, args.pin, workloads)

    outbound = WORKLOAD[outbound_arms.WORKLOAD_KEY] in workloads
    if outbound:
        files.update(outbound_arms.start(workdir / "outbound"))
    runs: list[Run] = []
    lifetimes: list[dict[str, Any]] = []
    try:
        for round_no in range(1, max(rounds_of.values(), default=0) + 1):
            for workload in (w for w in workloads if round_no <= rounds_of[w.key]):
                if workload.mode == "dpop":
                    files.update(dpop_files(keys, dpop_sizes, run_seconds, quiet=True))
                for arm in workload.arm_list:
                    result = measure(binary, workdir / f"r{round_no}-{workload.key}-{arm.key}", arm, workload,
                                     files, jwks, args, round_no)
                    runs.append(result)
                    log(f"round {round_no} {workload.key:<13} {arm.key} {arm.label:<16} "
                        f"{result.rps:>9,.0f} req/s  p50 {result.p50_us:>6} µs  p99 {result.p99_us:>6} µs  "
                        f"{result.cpu_us_per_req:>7.1f} CPU-µs/req  Envoy {result.envoy_cpu_pct:>3.0f} % "
                        f"wrk {result.wrk_cpu_pct:>3.0f} %"
                        + (f"  wraps {result.pool_wraps}" if result.pool_wraps else "")
                        + (f"  PROBLEM: {'; '.join(result.problems)}" if result.problems else ""))
        if outbound:
            lifetimes = outbound_arms.lifetimes(binary, workdir / "outbound", args, start_envoy, wrk, MODULE,
                                                log)
    finally:
        outbound_arms.stop()

    if SESSION.selected(workloads) and args.login_flows > 0:
        SESSION.measure_latency(binary, workdir, args.pin, args.login_flows)
    SESSION.close()
    rss, served = (None, None) if args.skip_memory else memory(binary, workdir, files, jwks, args)
    extra_rss = per_worker(rss["E"]) - per_worker(rss["A"]) if rss else None
    micro_results = [] if args.skip_micro else micro(args)
    hot = [] if args.skip_hotpath else hotpath(files, jwks, workdir)
    scale = [] if args.skip_policy else policy_scale(files, jwks, workdir)

    module_bytes, empty_bytes = MODULE.stat().st_size, EMPTY_FILTER.stat().st_size
    tgts = targets(runs, module_bytes, extra_rss, None if args.skip_micro else micro_results) \
        + [Target(*row) for row in outbound_arms.lifetime_targets(lifetimes)]
    if SESSION.selected(workloads):
        tgts += SESSION.targets(runs)
    context = machine_context(args, binary, module_bytes, empty_bytes)
    if BASELINE_MODULE is not None:
        data = BASELINE_MODULE.read_bytes()
        context["baseline"] = (f"{os.path.relpath(BASELINE_MODULE, REPO)}, {len(data):,} bytes "
                               f"({len(data) / 1024:.1f} KiB), sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    if DPOP_LIMITS:
        context["dpop"] = (f"{args.pool_dpop:,} timed + {args.pool_dpop_warmup:,} warm-up proofs, "
                           f"maxAgeSeconds {DPOP_MAX_AGE_S}, maxDpopProofs {DPOP_LIMITS['maxDpopProofs']:,}")
    context["load average at end"] = Path("/proc/loadavg").read_text().split()[0]
    context["wall time"] = f"{time.monotonic() - started:.0f} s"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps({
        "context": context, "runs": [asdict(r) for r in runs], "rss": rss, "micro": micro_results,
        "hotpath": hot, "policy_scale": scale, "session": SESSION.summary(),
        "outbound_lifetimes": lifetimes,
        "targets": [asdict(t) for t in tgts]}, indent=1))
    write_report(args.out / "report.md", runs, tgts, rss, served, micro_results, hot, context, scale,
                 SESSION.report())
    if outbound:
        with open(args.out / "report.md", "a") as report:
            report.write("\n".join(outbound_arms.report_lines(lifetimes)) + "\n")
    write_chart(args.out / "chart.png", runs)
    print_summary(runs, tgts, hot)
    outbound_arms.summary(lifetimes)
    if rss:
        print(f"\nRSS per extra worker VM: mesh-oauth {per_worker(rss['E']) / MIB:.2f} MiB, "
              f"empty filter {per_worker(rss['D']) / MIB:.2f} MiB, no filter {per_worker(rss['A']) / MIB:.2f} MiB")
    log(f"report: {args.out / 'report.md'}, chart: {args.out / 'chart.png'} "
        f"({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
