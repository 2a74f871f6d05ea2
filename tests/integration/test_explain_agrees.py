"""`mesh-oauth explain` and the filter agree: every case of the attack suite (`attacks.catalogue`),
and the requests of the rules suite (test_rules.py) and of the answers suite (test_answers.py),
each sent to the filter in a real Envoy and put to `explain` exactly as it was sent (method,
path and query, Host, every header). explain renders the core's own record of its decision;
its final step must name the status and reason of the audit line the filter wrote for that
request (and the audit line explain prints must agree with the filter's on decision, status,
reason, rule and provider).

explain gets the keys the filter would fetch: the document at the selected provider's
`jwksUri`, read here (nothing when it cannot be read, as the filter then has none)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest

import test_answers as answers
import test_rules as rules
from attacks import AttackKit, catalogue, plugin_config as attack_config, public_jwk
from harness import Envoy
from observe import audit_lines, start_together
from plugin_configs import CLAIM_HEADER, ISS_RSA
from tokens import claims, generate_key

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MESH_OAUTH_CLI") or REPO / "target" / "debug" / "mesh-oauth")
# What both must agree on, from an audit line.
COMPARED = ("decision", "status", "reason", "rule", "provider")


@dataclass
class Sent:
    """One request as a client sends it; `headers` may repeat a name."""
    suite: str
    config: str
    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    method: str = "GET"
    query: list[tuple[str, str]] | None = None


# --------------------------------------------------------------------------- the two answers


def filter_line(envoy: Envoy, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The filter's audit line for the request: its last (a held request is logged once
    decided)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line.fields for line in audit_lines(envoy) if line.fields.get("request_id") == request_id]
        decided = [fields for fields in lines if fields["decision"] != "held"]
        if decided:
            return decided[-1]
        assert time.monotonic() < deadline, f"no audit line for request {request_id} in {envoy.log_path}"
        time.sleep(0.05)


def candidate_tokens(sent: Sent) -> list[str]:
    values = [value for _, value in sent.headers] + [value for _, value in sent.query or []]
    found = []
    for value in values:
        for piece in re.split(r"[\s;=,]+", value):
            if piece.count(".") == 2:
                found.append(piece)
    return found


def issuer_of(token: str) -> str | None:
    try:
        payload = token.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, IndexError, RecursionError):  # a hostile payload may nest deeply
        return None
    return decoded.get("iss") if isinstance(decoded, dict) and isinstance(decoded.get("iss"), str) else None


def keys_for(config: dict[str, Any], sent: Sent) -> list[str]:
    """`--jwks` with the URL the provider of the request's token fetches its keys from: explain
    fetches it, and a fetch that fails is, for explain as for the filter, keys unavailable."""
    issuers = {provider.get("issuer"): provider for provider in config["providers"]}
    for token in candidate_tokens(sent):
        provider = issuers.get(issuer_of(token))
        if provider is not None:
            return ["--jwks", provider["jwksUri"]] if "jwksUri" in provider else []
    return []


@dataclass
class Explained:
    audit: dict[str, Any]
    final: str
    own_status: int | None
    stdout: str


def explain(config_path: Path, config: dict[str, Any], sent: Sent, authority: str) -> Explained:
    path = sent.path
    if sent.query:
        path = f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(sent.query)}"
    host = next((value for name, value in sent.headers if name.lower() == "host"), authority)
    args = [str(CLI), "explain", "--config", str(config_path), "--method", sent.method, "--path", path,
            "--host", host, "--scheme", "http", *keys_for(config, sent)]
    for name, value in sent.headers:
        if name.lower() != "host":
            args += ["--request-header", f"{name}: {value}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    audit = next(json.loads(line.split(": ", 1)[1]) for line in lines if line.startswith("  audit line: "))
    final_at = next(i for i, line in enumerate(lines) if line.startswith("final: "))
    own = next((int(line.rsplit(": ", 1)[1]) for line in lines[final_at:]
                if line.startswith("  the refusal's own status")), None)
    return Explained(audit, lines[final_at], own, result.stdout)


def final_names(explained: Explained, line: dict[str, Any]) -> bool:
    """explain's final step says what the audit line says."""
    final = explained.final
    match line["decision"]:
        case "allow":
            return final.startswith("final: allowed: ")
        case "would_deny":
            return final.startswith("final: allowed (report mode)") and \
                f"({line['reason']})" in explained.stdout.split("enforcing, the filter would answer: ", 1)[-1]
        case "serve":
            return final.startswith(f"final: {line['status']} answered by the filter itself")
        case "deny":
            shown = re.match(r"final: (\d+) .*\((\w+)\)$", final)
            if shown is None or shown.group(2) != line["reason"]:
                return False
            return (explained.own_status or int(shown.group(1))) == line["status"]
    return False


@dataclass
class Target:
    envoy: Envoy
    config: dict[str, Any]
    config_path: Path


def agree(target: Target, sent: Sent) -> None:
    request_id = f"explain-{uuid.uuid4().hex[:12]}"
    body = b"{}" if sent.method == "POST" else None
    target.envoy.request(sent.path, method=sent.method, headers=[*sent.headers, ("x-request-id", request_id)],
                         query=sent.query, body=body)
    line = filter_line(target.envoy, request_id)
    explained = explain(target.config_path, target.config, sent, f"127.0.0.1:{target.envoy.port}")
    ours = {key: line.get(key) for key in COMPARED}
    theirs = {key: explained.audit.get(key) for key in COMPARED}
    context = f"{sent.suite} {sent.config} {sent.method} {sent.path}\n{explained.stdout}"
    assert theirs == ours, f"filter {ours} but explain {theirs}: {context}"
    assert final_names(explained, line), f"explain's final step is not the audit line {ours}: {context}"


def with_audit(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with every allowed request logged too (sampling changes no decision)."""
    return {**config, "audit": {**config.get("audit", {}), "allowedSampleRate": 1}}


def targets_for(module_envoys, configs: dict[str, dict[str, Any]], workdir: Path, **build: Any) -> dict[str, Target]:
    built = {}
    for name, config in configs.items():
        config = with_audit(config)
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        built[name] = Target(module_envoys.build(config, **build), config, path)
    envoys = [target.envoy for target in built.values()]
    for at in range(0, len(envoys), 2):
        start_together(envoys[at:at + 2])
    return built


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    assert CLI.is_file() and os.access(CLI, os.X_OK), f"mesh-oauth CLI not found at {CLI} (set MESH_OAUTH_CLI)"
    return tmp_path_factory.mktemp("explain")


# --------------------------------------------------------------------------- the attack suite

ATTACKS = catalogue()


@pytest.fixture(scope="module")
def attack(module_envoys, module_idps, workdir):
    attacker = module_idps()
    attacker.set_jwks({"keys": []})
    kit = AttackKit(attacker.url)
    requests = {case.id: case.build(kit) for case in ATTACKS}
    idp = module_idps()
    idp.set_json("/main/jwks.json", kit.main_jwks())
    key_uris = {}
    for name, document in kit.key_sets.documents().items():
        idp.set_json(f"/keys/{name}.json", document)
        key_uris[name] = f"{idp.url}/keys/{name}.json"
    idp.set_json("/only-weak/jwks.json", {"keys": [public_jwk(kit.key_sets.weak)]})
    config = attack_config(kit.main_jwks(), idp.url + "/main/jwks.json", key_uris, idp.url + "/only-weak/jwks.json")
    targets = targets_for(module_envoys, {"attack": config}, workdir, idps=[idp],
                          extra_clusters={attacker.cluster: attacker.port})
    return targets["attack"], requests


@pytest.mark.parametrize("case", ATTACKS, ids=[f"{c.group}/{c.id}" for c in ATTACKS])
def test_attack_case(attack, case):
    target, requests = attack
    req = requests[case.id]
    agree(target, Sent("attacks", "attack", "/orders", list(req.headers), query=req.query))


# --------------------------------------------------------------------------- the rules suite


@pytest.fixture(scope="module")
def rule_targets(module_envoys, module_idps, keys, workdir):
    idp = module_idps()
    provider = rules.rsa_provider(idp, keys)
    configs = {
        "deny": {"providers": [provider], "unmatched": "deny"},
        "anonymous": {"providers": [provider], "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
             "requires": {"scopes": ["orders:write"]}}]},
        "report": {"providers": [provider], "mode": "report"},
        "step_up": {"providers": [provider], "rules": [
            {"name": "payments", "match": {"paths": ["/payments/*"]},
             "requires": {"acrValues": ["urn:mfa"], "maxAuthAgeSeconds": 300, "scopes": ["pay"]}}]},
        "delegation": {"providers": [provider], "rules": [
            {"name": "payouts", "match": {"paths": ["/payouts"]}, "requires": {"delegation": "forbidden"}},
            {"name": "agents", "match": {"paths": ["/orders"]},
             "requires": {"clients": ["shop-agent"], "actor": ["agent-7"], "maxDelegationDepth": 1}}]},
        "audiences": {"providers": [provider], "rules": [
            {"name": "orders", "match": {"paths": ["/orders/*"]}, "requires": {"audiences": ["orders"]}},
            {"name": "billing", "match": {"paths": ["/billing/*"]}, "requires": {"audiences": ["billing"]}}]},
    }
    return targets_for(module_envoys, configs, workdir, idps=[idp])


def rule_requests(keys) -> list[Sent]:
    """The requests of test_rules.py, minted now."""
    def bearer(**extra):
        return list(rules.bearer(keys, **extra).items())

    now = int(time.time())
    api = [("Host", "api.example.com")]
    sent = [
        Sent("rules", "deny", "/orders"),
        Sent("rules", "deny", "/orders", bearer()),
        Sent("rules", "anonymous", "/public/index.html"),
        Sent("rules", "anonymous", "/public/index.html", bearer(iss="https://unknown.idp.test")),
        Sent("rules", "anonymous", "/public/index.html", [(CLAIM_HEADER, "forged")]),
        Sent("rules", "anonymous", "/public/index.html", bearer(sub="alice")),
        Sent("rules", "anonymous", "/private", api),
        Sent("rules", "anonymous", "/publicity", api),
        Sent("rules", "anonymous", "/orders/7", bearer(scope="orders:read"), "POST"),
        Sent("rules", "anonymous", "/orders/7", bearer(scope="orders:read orders:write"), "POST"),
        Sent("rules", "anonymous", "/orders/7", bearer(scope="orders:read")),
        Sent("rules", "report", "/orders"),
        Sent("rules", "report", "/orders", bearer(iss="https://unknown.idp.test")),
    ]
    for extra in ({"acr": "pwd", "auth_time": now}, {"acr": "urn:mfa", "auth_time": now - 900}, {},
                  {"acr": "urn:mfa", "auth_time": now - 10}):
        sent.append(Sent("rules", "step_up", "/payments/1", [*bearer(scope="pay", **extra), ("Host", "localhost")]))
    sent.append(Sent("rules", "step_up", "/payments/1",
                     [*bearer(acr="urn:mfa", auth_time=now), ("Host", "localhost")]))
    for path, extra in [
        ("/orders", {"client_id": "shop-agent", "act": {"sub": "agent-7"}}),
        ("/orders", {"azp": "shop-agent", "act": {"sub": "agent-7"}}),
        ("/orders", {"client_id": "other-app", "act": {"sub": "agent-7"}}),
        ("/orders", {"client_id": "shop-agent", "act": {"sub": "agent-9"}}),
        ("/orders", {"client_id": "shop-agent"}),
        ("/orders", {"client_id": "shop-agent", "act": {"sub": "agent-7", "act": {"sub": "planner"}}}),
        ("/payouts", {"act": {"sub": "agent-7"}}),
        ("/payouts", {}),
    ]:
        sent.append(Sent("rules", "delegation", path, bearer(**extra)))
    for_orders = [("Authorization", f"Bearer {keys.mint('RS256', claims(ISS_RSA, audience=['orders', 'web']))}")]
    sent += [Sent("rules", "audiences", "/orders/1", for_orders), Sent("rules", "audiences", "/billing/1", for_orders)]
    return sent


def test_rules_suite(rule_targets, keys):
    for sent in rule_requests(keys):
        agree(rule_targets[sent.config], sent)


# --------------------------------------------------------------------------- the answers suite


@pytest.fixture(scope="module")
def answer_targets(module_envoys, module_idps, keys, workdir):
    keyless = module_idps()
    keyless.set_jwks(keys.jwks(["RS256"]), status=500)
    return targets_for(module_envoys, answers.configs(keys, keyless), workdir, idps=[keyless])


def answer_requests(keys) -> list[Sent]:
    """The requests of test_answers.py, minted now."""
    def bearer(token):
        return [("Authorization", f"Bearer {token}")]

    forger = generate_key("RS256", kid=keys["RS256"].kid)
    bad = {
        "api-key": answers.API_KEY,
        "expired": answers.expired(keys),
        "signature": jwt.encode(answers.claims(), forger.private, algorithm="RS256", headers={"kid": forger.kid}),
        "unknown-issuer": keys.mint("RS256", answers.claims(answers.ISS_UNKNOWN)),
    }
    browser = [("Accept", answers.BROWSER_ACCEPT)]
    sent = []
    for config in ("full", "minimal"):
        sent += [
            Sent("answers", config, "/items", bearer(answers.expired(keys))),
            Sent("answers", config, "/orders/7", bearer(answers.valid(keys, scope="orders:read"))),
            Sent("answers", config, "/items"),
            Sent("answers", config, "/items", bearer(answers.keyless_token(keys))),
        ]
    sent += [
        Sent("answers", "deny", "/items"),
        Sent("answers", "deny", "/items", bearer(answers.expired(keys))),
        Sent("answers", "deny", "/orders/7", bearer(answers.valid(keys, scope="orders:read"))),
        Sent("answers", "deny", "/items", bearer(answers.keyless_token(keys))),
        Sent("answers", "deny", "/special/x", [*bearer(answers.valid(keys)), *bearer(answers.valid(keys))]),
        Sent("answers", "deny", "/special%2Fx"),
        Sent("answers", "deny", "/special/x", bearer(answers.valid(keys))),
        Sent("answers", "deny", "/orders/7", bearer(answers.valid(keys, scope="orders:write"))),
        Sent("answers", "login", "/app/page", browser, query=[("secret-in-query", "1"), ("page", "2")]),
        Sent("answers", "login", "/app/a&b=c+d%20e;f", browser),
        Sent("answers", "login", "/app/page", [("Accept", "text/html")], "HEAD"),
        Sent("answers", "login", "/app/page", [*browser, *bearer(answers.expired(keys))]),
        Sent("answers", "login", "//evil.example/x", browser),
        Sent("answers", "login", "/app/page", [("Accept", "application/json")]),
        Sent("answers", "login", "/app/page", browser, "POST"),
        Sent("answers", "login", "/orders/7", [*browser, *bearer(answers.valid(keys, scope="orders:read"))]),
        Sent("answers", "login", "/custom/page", browser, query=[("code", "abc")]),
        Sent("answers", "full", "/public/page", [*bearer(answers.valid(keys)), (answers.IDENTITY_HEADER, "mallory")]),
        Sent("answers", "full", "/public/page", [(answers.IDENTITY_HEADER, "mallory")]),
        Sent("answers", "full", "/public/page", [("Authorization", f"Bearer {answers.API_KEY}"),
                                                 *bearer(answers.valid(keys))]),
        Sent("answers", "full", "/public/page", bearer(answers.keyless_token(keys))),
    ]
    for token in bad.values():
        sent += [Sent("answers", "full", path, bearer(token)) for path in ("/public/page", "/open/page", "/private/x")]
    return sent


def test_answers_suite(answer_targets, keys):
    for sent in answer_requests(keys):
        agree(answer_targets[sent.config], sent)
