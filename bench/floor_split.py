#!/usr/bin/env python3
"""Where an arm's Envoy CPU goes, per request (issue 30): the repeated-token workload's arms
(bench.py's A, D, K, L, S, M, E, ...) each on a fresh Envoy set up as `make bench` sets it up
(`--concurrency 1` pinned to one core, wrk on the other), with `perf record` (cpu-clock) on
Envoy for the middle of the timed window. Envoy's CPU-µs/req is split by where the samples
fell: `wasm` (V8's JIT code: the module's own Wasm and V8's call stubs), `envoy` (Envoy's
binary, V8's runtime and the proxy-wasm host calls included: the binary is stripped, so no
finer), `kernel`, `libc`, other. So E's `wasm` less M's is the module's own work as Envoy runs
it, and K's `envoy` less D's is what the whole-map read costs Envoy.

    .venv/bin/python bench/floor_split.py                      # arms DKLSME, 3 rounds
    .venv/bin/python bench/floor_split.py --arms DKME --browser --rounds 5

`--browser`: every request carries, besides its token, a browser's headers (user agent,
accept, client hints, a 1 KiB cookie: 15 headers, about 2 KiB) instead of wrk's bare request,
to see how the whole-map read grows with the map. Needs `perf` (Debian: linux-perf) and
`make build` done; the empty filter is built when missing. Prints one table; no files kept."""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench  # bench/, next to this file

# The shared objects perf names, grouped.
GROUPS = [("wasm", re.compile(r"^\[JIT\]")), ("envoy", re.compile(r"^envoy$")),
          ("kernel", re.compile(r"^\[kernel")), ("libc", re.compile(r"^libc"))]

# A browser's request to an API besides its token (a 1 KiB cookie of first-party tracking ids).
BROWSER_HEADERS = [
    ("Host", "api.example.com"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/131.0.0.0 Safari/537.36"),
    ("Accept", "application/json, text/plain, */*"),
    ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Referer", "https://app.example.com/orders?page=2"),
    ("Origin", "https://app.example.com"),
    ("Sec-Ch-Ua", '"Chromium";v="131", "Not_A Brand";v="24"'),
    ("Sec-Ch-Ua-Mobile", "?0"),
    ("Sec-Ch-Ua-Platform", '"Linux"'),
    ("Sec-Fetch-Site", "same-site"),
    ("Sec-Fetch-Mode", "cors"),
    ("Sec-Fetch-Dest", "empty"),
    ("Cookie", "; ".join(f"_ga{n}=GA1.2.{n * 7919:010d}.{n * 104729:010d}" for n in range(28))),
]


def group(dso: str) -> str:
    return next((name for name, pattern in GROUPS if pattern.search(dso)), "other")


def measure(binary: Path, workdir: Path, arm: str, jwks: str, lua: list[str], seconds: int) -> dict[str, Any]:
    workload = bench.WORKLOAD["repeat"]
    shutil.rmtree(workdir, ignore_errors=True)
    envoy = bench.start_envoy(binary, workdir, bench.arm_filters(arm, jwks, workload), 1, True)
    try:
        assert envoy.port is not None and envoy.proc is not None
        pid = envoy.proc.pid
        bench.wrk(envoy.port, 1, 16, lua, True)
        time.sleep(0.2)
        result: dict[str, Any] = {}
        load = threading.Thread(target=lambda: result.update(bench.wrk(envoy.port, seconds, 16, lua, True)))
        before = bench.cpu_ticks(pid)
        load.start()
        time.sleep(0.5)
        data = workdir / "perf.data"
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-p", str(pid), "-o", str(data),
                        "--", "sleep", str(seconds - 1)], check=True, capture_output=True)
        load.join()
        after = bench.cpu_ticks(pid)
        report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
                                check=True, capture_output=True, text=True).stdout
    finally:
        envoy.stop()
    shares: dict[str, float] = {}
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(.+)", line)
        if match:
            name = group(match.group(2).strip())
            shares[name] = shares.get(name, 0.0) + float(match.group(1)) / 100
    requests = max(result["requests"], 1)
    cpu_us = (after - before) / bench.CLK_TCK * 1e6 / requests
    problems = bench.expected_refusals(workload, bench.ARM[arm], result)
    return {"rps": result["requests"] / (result["duration_us"] / 1e6), "cpu_us": cpu_us,
            "parts": {name: cpu_us * share for name, share in shares.items()}, "problems": problems}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="AWDKLSME", help="bench.py arm letters, run in this order each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=4, help="timed seconds per run (perf records all but one)")
    p.add_argument("--browser", action="store_true", help="a browser's headers on every request (see above)")
    args = p.parse_args()
    if shutil.which("perf") is None:
        p.error("needs perf (Debian: apt-get install linux-perf)")
    unknown = set(args.arms) - set(bench.WORKLOAD["repeat"].arms)
    if unknown:
        p.error(f"arms {''.join(sorted(unknown))} do not run the repeated-token workload")
    if not bench.EMPTY_FILTER.exists():
        bench.run(["cargo", "build", "--release", "--target", bench.WASM_TARGET], cwd=bench.EMPTY_FILTER_DIR)
    binary = bench.locate_envoy()
    keys, files = bench.token_files({"RS256": 30000, "ES256": 60000, "EdDSA": 60000, "PS256": 30000})
    jwks = keys.jwks_string(bench.ALGS)
    workdir = bench.REPO / ".cache" / "bench" / "floor-split"
    token = files["RS256.repeat"].read_text().strip()
    if args.browser:
        workdir.mkdir(parents=True, exist_ok=True)
        headers = workdir / "browser-headers"
        headers.write_text("".join(f"{name}: {value}\n" for name, value in
                                   [*BROWSER_HEADERS, ("Authorization", f"Bearer {token}")]))
        lua = ["headers", str(headers)]
    else:
        lua = bench.lua_args(bench.WORKLOAD["repeat"], files)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
    for round_no in range(1, args.rounds + 1):
        for arm in args.arms:
            r = measure(binary, workdir / arm, arm, jwks, lua, args.seconds)
            runs[arm].append(r)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["parts"].items()))
            bench.log(f"round {round_no} {arm} {bench.ARM[arm].label:<16} {r['rps']:>8,.0f} req/s "
                      f"{r['cpu_us']:5.1f} CPU-µs/req: {parts}" + (f"  PROBLEM: {r['problems']}" if r["problems"] else ""))
    names = ["wasm", "envoy", "kernel", "libc", "other"]
    print(f"\n== Envoy CPU-µs/req by where it ran (median of {args.rounds} rounds"
          f"{', browser headers' if args.browser else ''}) ==")
    print(f"{'arm':<22}{'req/s':>9}{'CPU-µs':>8}" + "".join(f"{n:>8}" for n in names))
    for arm, measured in runs.items():
        good = [r for r in measured if not r["problems"]] or measured

        def mid(pick: Any) -> float:
            return statistics.median(pick(r) for r in good)

        print(f"{arm + ' ' + bench.ARM[arm].label:<22}{mid(lambda r: r['rps']):>9,.0f}{mid(lambda r: r['cpu_us']):>8.1f}"
              + "".join(f"{mid(lambda r, n=n: r['parts'].get(n, 0.0)):>8.2f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
