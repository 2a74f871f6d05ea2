"""An invalid plugin configuration stops Envoy from starting (static bootstrap: Envoy exits with
"Unable to create Wasm plugin mesh-oauth"), and the plugin's log line names the field:
`wasm log mesh-oauth mesh-oauth: <path>: <problem>`."""

import json

import pytest

from checks import refused_start


def plugin_log_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "wasm log" in line]


VALID_PROVIDER = {"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks.json"}


@pytest.mark.parametrize(
    "config, must_name",
    [
        ({"providers": [{"issuer": "https://a", "jwksUri": "not a url"}]}, ["providers[0].jwksUri"]),
        ({"providers": [VALID_PROVIDER], "colour": "blue"}, ["colour"]),
        ({"providers": [{"issuer": "https://a", "jwks_uri": "https://a/jwks"}]}, ["providers[0]", "jwks_uri"]),
        ({"providers": []}, ["providers"]),
        ({"providers": [VALID_PROVIDER], "unmatched": "maybe"}, ["unmatched"]),
        ({"providers": [{**VALID_PROVIDER, "name": "a-b"},
                        {"name": "a.b", "issuer": "https://b", "jwksUri": "https://b/jwks"}]},
         ["providers[1].name", "a_b", "metric names"]),
    ],
    ids=["jwksUri-not-a-url", "unknown-top-level-field", "unknown-provider-field", "no-providers", "bad-unmatched",
         "names-alike-in-metrics"],
)
def test_invalid_config_is_refused_and_the_field_is_logged(envoys, config, must_name):
    log = refused_start(envoys, config)
    assert "Unable to create Wasm plugin mesh-oauth" in log
    lines = plugin_log_lines(log)
    assert any(all(name in line for name in must_name) for line in lines), (
        f"no plugin log line names {must_name}: {lines}")


def test_configuration_that_is_not_json_is_refused(envoys):
    log = refused_start(envoys, "{not json")
    assert plugin_log_lines(log), "the plugin should say why it refused the configuration"


def test_valid_config_starts(envoys):
    """The counterpart: the same bootstrap with a valid plugin configuration starts."""
    envoy = envoys.start(json.dumps({"providers": [VALID_PROVIDER]}))
    assert envoy.request("/").status == 401
