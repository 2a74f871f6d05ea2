"""Delivery tests: the OCI image through a real registry, the repository's WasmPlugin files
against Istio's CRD schema and the real module, and live reconfiguration through Envoy's ECDS.

Real processes only, all on 127.0.0.1: Debian's `docker-registry`, `skopeo`, Node with
@kubernetes-models/istio, and Envoy with the module (tests/integration/harness.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import EchoServer, EnvoyFactory, IdpServer, locate_envoy  # noqa: E402
from tokens import KeySet  # noqa: E402


@pytest.fixture(scope="session")
def module_path() -> Path:
    path = Path(os.environ.get("MESH_OAUTH_WASM") or REPO / "dist" / "mesh_oauth.wasm")
    if not path.is_file():
        pytest.fail(f"mesh-oauth Wasm module not found at {path}: run `make build` "
                    "or point MESH_OAUTH_WASM at it", pytrace=False)
    return path


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    path = locate_envoy()
    if not os.access(path, os.X_OK):
        pytest.fail(f"Envoy not found at {path}: `make venv`, or set ENVOY_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def keys() -> KeySet:
    return KeySet(["RS256", "ES256"])


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def idp() -> Iterator[IdpServer]:
    server = IdpServer()
    yield server
    server.stop()


@pytest.fixture
def envoys(envoy_bin: Path, echo: EchoServer, module_path: Path, tmp_path: Path) -> Iterator[EnvoyFactory]:
    factory = EnvoyFactory(envoy_bin, module_path, echo, tmp_path)
    yield factory
    factory.stop_all()
