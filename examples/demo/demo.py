"""mesh-oauth walk-through: a demo IdP, an echo upstream and a real Envoy running the module,
then one scripted request per behaviour, with what the plugin answered and why.

Run with `make demo`. Everything listens on 127.0.0.1 and is stopped at the end. Exit status 0
when every request got the status the configuration contract promises, 1 otherwise."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# The integration harness already knows how to run the IdP, the upstream and Envoy.
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import EchoServer, Envoy, EnvoyFactory, EnvoyStartError, IdpServer, Response, locate_envoy  # noqa: E402
from tokens import KeySet, claims  # noqa: E402

ALG = "RS256"
AUDIENCE = "orders"
USER_HEADER = "x-user"
# An unknown kid makes the plugin refetch the keys at most this often (default 30 s; short
# here so the rotation step shows a new key accepted on its first use).
MIN_REFETCH_SECONDS = 1
KEYS_LOADED_TIMEOUT_S = 10.0
ROTATION_TIMEOUT_S = 10.0
RETRY_INTERVAL_S = 0.25
ABSENT = object()  # an upstream header the request must not carry


def plugin_config(idp: IdpServer) -> dict[str, Any]:
    return {
        "providers": [
            {
                # No jwksUri: keys come from `<issuer>/.well-known/openid-configuration`.
                "issuer": idp.url,
                "audiences": [AUDIENCE],
                "jwksMinRefetchSeconds": MIN_REFETCH_SECONDS,
                "outputClaimToHeaders": [{"header": USER_HEADER, "claim": "sub"}],
            }
        ],
        "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"name": "orders-read", "match": {"paths": ["/orders/*"], "methods": ["GET"]},
             "requires": {"scopes": ["orders:read"]}},
            {"name": "admin", "match": {"paths": ["/admin/*"]}, "deny": True},
        ],
        "unmatched": "authenticated",
    }


# --------------------------------------------------------------------------- the walk-through


@dataclass
class Case:
    description: str
    method: str
    path: str
    token: str | None
    expect_status: int
    # For a request that passes: the x-user value upstream must see (ABSENT: none at all;
    # None: not checked).
    expect_user: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    case: Case
    status: int
    reason: str
    problem: str | None  # why the outcome differs from the contract, None when it matches
    note: str = ""  # printed on a line of its own below the outcome


def reason_of(resp: Response) -> str:
    """Why the plugin answered as it did: the RFC 6750 error, or what upstream received."""
    if resp.status == 200:
        try:
            seen = resp.json()["headers"]
        except (ValueError, KeyError, TypeError):
            return "answered by something other than the echo upstream"
        user = seen.get(USER_HEADER)
        token = "token forwarded" if "authorization" in seen else "token removed"
        return f"upstream saw {USER_HEADER}: {user}, {token}" if user else f"upstream saw no {USER_HEADER}"
    parts = []
    try:
        body = resp.json()
        parts.append(f"{body.get('error')}: {body.get('error_description')}")
    except ValueError:
        pass
    challenge = resp.header("www-authenticate")
    if challenge and 'scope="' in challenge:
        parts.append("scope=" + challenge.split('scope="', 1)[1].split('"', 1)[0])
    if challenge and not parts:
        parts.append(f"WWW-Authenticate: {challenge}")
    return ", ".join(parts) or "(no body)"


def problem_of(case: Case, resp: Response) -> str | None:
    if resp.status != case.expect_status:
        return f"expected {case.expect_status}, got {resp.status}"
    if resp.status == 200 and case.expect_user is not None:
        seen = resp.json()["headers"].get(USER_HEADER, ABSENT)
        if seen != case.expect_user:
            wanted = "no header" if case.expect_user is ABSENT else repr(case.expect_user)
            return f"upstream {USER_HEADER}: expected {wanted}, got {seen!r}"
    return None


def send(envoy: Envoy, case: Case) -> Response:
    headers = dict(case.headers)
    if case.token is not None:
        headers["Authorization"] = f"Bearer {case.token}"
    return envoy.request(case.path, method=case.method, headers=headers)


def run_case(envoy: Envoy, case: Case) -> Outcome:
    resp = send(envoy, case)
    return Outcome(case, resp.status, reason_of(resp), problem_of(case, resp))


def tamper_signature(token: str) -> str:
    """Flips one character in the middle of the signature (the last one may only hold padding bits)."""
    head, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1:]}"


def forge_claims(genuine: str, wanted: str) -> str:
    """The claims of `wanted` pasted between the header and signature of `genuine`."""
    head, _, signature = genuine.split(".")
    return f"{head}.{wanted.split('.')[1]}.{signature}"


def scripted_cases(idp: IdpServer, keys: KeySet) -> list[Case]:
    def token(issuer: str = idp.url, audience: str = AUDIENCE, sub: str = "alice",
              scope: str | None = "orders:read", **times: int) -> str:
        """`times`: `now` and `lifetime` of `tokens.claims`."""
        named = {"sub": sub, **({"scope": scope} if scope is not None else {})}
        return keys.mint(ALG, claims(issuer, audience=audience, **times, **named))

    an_hour_ago = int(time.time()) - 3600
    good = token()
    return [
        Case("valid token with scope orders:read", "GET", "/orders/42", good, 200, "alice"),
        Case("no token", "GET", "/orders/42", None, 401),
        Case("valid token, scope profile only", "GET", "/orders/42", token(sub="bob", scope="profile"), 403),
        Case("expired token (exp 10 min ago)", "GET", "/orders/42", token(now=an_hour_ago, lifetime=3000), 401),
        Case("token for another audience (billing)", "GET", "/orders/42", token(audience="billing"), 401),
        Case("token from an unknown issuer", "GET", "/orders/42", token(issuer="https://evil.example"), 401),
        Case("tampered signature", "GET", "/orders/42", tamper_signature(good), 401),
        Case("forged claims on a genuine signature", "GET", "/orders/42",
             forge_claims(token(sub="bob", scope="profile"), token(sub="bob", scope="orders:read admin")),
             401),
        Case("anonymous, public path", "GET", "/public/index.html", None, 200, ABSENT),
        Case("anonymous, forged x-user header", "GET", "/public/index.html", None, 200, ABSENT,
             headers={USER_HEADER: "admin"}),
        Case("valid token, deny rule", "GET", "/admin/users", good, 403),
        Case("valid token, unmatched path", "POST", "/profile", token(scope=None), 200, "alice"),
        Case("no token, unmatched path", "POST", "/profile", None, 401),
    ]


def rotate_keys(envoy: Envoy, idp: IdpServer, old: KeySet) -> Outcome:
    """The IdP publishes a new key next to the old one and signs with it; the first token with
    the new kid waits for one refetch of the key set and is accepted."""
    new = KeySet([ALG])
    idp.set_jwks({"keys": [old[ALG].public_jwk, new[ALG].public_jwk]})
    case = Case("key rotation: token from a new key", "GET", "/orders/42",
                new.mint(ALG, claims(idp.url, audience=AUDIENCE, sub="carol", scope="orders:read")), 200, "carol")
    started = time.monotonic()
    attempts = 0
    first: Response | None = None
    while True:
        resp = send(envoy, case)
        attempts += 1
        if first is None:
            first = resp
        elapsed = time.monotonic() - started
        if resp.status == 200 or elapsed >= ROTATION_TIMEOUT_S:
            break
        time.sleep(RETRY_INTERVAL_S)
    verdict = "accepted after" if resp.status == 200 else "not accepted within"
    note = f"new kid {new[ALG].kid} {verdict} {elapsed:.1f}s, {attempts} attempt(s)"
    if first.status != 200:
        note += f"; first try: {first.status} {reason_of(first)}"
    return Outcome(case, resp.status, reason_of(resp), problem_of(case, resp), note)


# --------------------------------------------------------------------------- output


def print_header(idp: IdpServer, echo: EchoServer, envoy: Envoy, module: Path) -> None:
    config = plugin_config(idp)
    print("=" * 78)
    print("mesh-oauth demo: OAuth2/OIDC bearer tokens checked inside a real Envoy")
    print("=" * 78)
    print(f"  module    {module}")
    print(f"  IdP       {idp.url}  (OpenID discovery + JWKS, {ALG} key)")
    print(f"  upstream  {echo.url}  (echoes the request it received)")
    print(f"  Envoy     http://127.0.0.1:{envoy.port}")
    print(f"  provider  issuer={idp.url} audiences={[AUDIENCE]}")
    print(f"            keys via OpenID discovery, refetched on an unknown kid (at most every {MIN_REFETCH_SECONDS}s); claim sub -> {USER_HEADER}")
    for rule in config["rules"]:
        match = rule["match"]
        what = ("anonymous allowed" if rule.get("allowAnonymous") else "deny" if rule.get("deny")
                else f"requires {json.dumps(rule['requires'])}")
        print(f"  rule      {rule['name']:<12} {' '.join(match.get('methods', ['*'])):<4} "
              f"{' '.join(match['paths']):<11} {what}")
    print(f"  unmatched {config['unmatched']}")
    print()


def print_outcomes(outcomes: list[Outcome]) -> None:
    width_desc = max(len(o.case.description) for o in outcomes)
    width_req = max(len(o.case.method) + 1 + len(o.case.path) for o in outcomes)
    print(f"     {'case':<{width_desc}}  {'request':<{width_req}}  got  reason")
    print(f"     {'-' * width_desc}  {'-' * width_req}  ---  {'-' * 30}")
    for o in outcomes:
        mark = "ok  " if o.problem is None else "FAIL"
        request = f"{o.case.method} {o.case.path}"
        print(f"{mark} {o.case.description:<{width_desc}}  {request:<{width_req}}  {o.status}  {o.reason}")
        if o.note:
            print(f"     {'':<{width_desc}}  {'':<{width_req}}       {o.note}")


# --------------------------------------------------------------------------- main


def wait_for_keys(envoy: Envoy, idp: IdpServer, keys: KeySet) -> tuple[float, int]:
    """The plugin fetches discovery and keys right after start and answers 503 until it has
    them; probe with a valid token until it stops. Returns (seconds waited, 503s seen)."""
    probe = {"Authorization": "Bearer " + keys.mint(ALG, claims(idp.url, audience=AUDIENCE, scope="orders:read"))}
    started = time.monotonic()
    unavailable = 0
    while (status := envoy.request("/orders/probe", headers=probe).status) == 503:
        unavailable += 1
        if time.monotonic() - started > KEYS_LOADED_TIMEOUT_S:
            raise RuntimeError(f"the plugin had no keys from {idp.url} within {KEYS_LOADED_TIMEOUT_S}s")
        time.sleep(0.05)
    if status != 200:
        raise RuntimeError(f"a valid token was answered {status} once keys were loaded")
    return time.monotonic() - started, unavailable


def main() -> int:
    module = Path(os.environ.get("MESH_OAUTH_WASM") or REPO / "dist" / "mesh_oauth.wasm")
    if not module.is_file():
        print(f"mesh-oauth module not found at {module}: run `make build` (or set MESH_OAUTH_WASM)",
              file=sys.stderr)
        return 2
    # make and the terminal send SIGTERM/SIGINT; both unwind through the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    workdir = Path(tempfile.mkdtemp(prefix="mesh-oauth-demo-"))
    echo = idp = factory = None
    keep_workdir = False
    try:
        keys = KeySet([ALG])
        idp = IdpServer()
        idp.set_jwks(keys.jwks([ALG]))
        echo = EchoServer()
        factory = EnvoyFactory(locate_envoy(), module, echo, workdir)
        envoy = factory.start(plugin_config(idp), idps=[idp])
        print_header(idp, echo, envoy, module)
        waited, unavailable = wait_for_keys(envoy, idp, keys)
        print(f"plugin ready to verify tokens after {waited:.2f}s ({unavailable} probe(s) answered 503 "
              "while its first key fetch was in flight)\n")

        outcomes = [run_case(envoy, case) for case in scripted_cases(idp, keys)]
        # The refetch rate limit counts from the first key fetch: let it pass once.
        time.sleep(MIN_REFETCH_SECONDS)
        outcomes.append(rotate_keys(envoy, idp, keys))
        print_outcomes(outcomes)

        failed = [o for o in outcomes if o.problem is not None]
        print()
        if not failed:
            print(f"all {len(outcomes)} requests answered as the contract says "
                  f"(IdP served discovery {idp.count(IdpServer.DISCOVERY_PATH)}x, "
                  f"keys {idp.count(IdpServer.JWKS_PATH)}x)")
            return 0
        keep_workdir = True
        print(f"{len(failed)} of {len(outcomes)} requests differ from the contract:")
        for o in failed:
            print(f"  - {o.case.description} ({o.case.method} {o.case.path}): {o.problem}")
        print(f"Envoy log: {envoy.log_path}")
        return 1
    except EnvoyStartError as err:
        keep_workdir = True
        print(f"Envoy did not start: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception:
        keep_workdir = True
        print(f"demo failed; Envoy's files are in {workdir}", file=sys.stderr)
        raise
    finally:
        if factory is not None:
            factory.stop_all()
        for server in (idp, echo):
            if server is not None:
                server.stop()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
