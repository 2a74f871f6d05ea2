#!/usr/bin/env python3
"""Sums a `perf report` of Node running bench/hotpath.mjs by Wasm function: what the module's
own work on a request is made of (issue 30).

V8 names each compiled Wasm function in perf's map (`node --perf-basic-prof`) `JS:NAME-N-tier`,
NAME from the module's `name` section, or `wasm-function[N]` when it has none, N the index in
the module's function space (given MODULE, such names are looked up in its name section). The
module `make build` makes has none (`strip = true`, then wasm-opt), so build one that keeps it
beside the other (same code, before wasm-opt):

    CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --target wasm32-wasip1 --lib --target-dir target/names
    perf record -F 10000 -o /tmp/hotpath.perf -- node --perf-basic-prof bench/hotpath.mjs \\
        target/names/wasm32-wasip1/release/mesh_oauth.wasm .cache/bench/envoy/hotpath.json 20000 20
    perf report -i /tmp/hotpath.perf --sort sym --stdio -q | .venv/bin/python bench/wasm_names.py

(`.cache/bench/envoy/hotpath.json` is the repeated-token fixture `make bench` leaves; any
hotpath.mjs fixture works.) Prints each module function's share of the module's samples, the
largest first, and the allocator's, the byte scans' and the UTF-8 checks' shares in all."""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Shares worth seeing at a glance: (label, pattern on the function's name).
GROUPS = [
    ("allocator (dlmalloc, free, realloc, Vec growth)",
     re.compile(r"dlmalloc|dlfree|dlrealloc|malloc|free|rust_alloc|rust_dealloc|rust_realloc|rdl_|finish_grow|"
                r"dispose_chunk|no_alloc_shim")),
    ("memcmp, memchr, memcpy, memset", re.compile(r"memcmp|memchr|memcpy|memset|memmove")),
    ("UTF-8 checks and str searches", re.compile(r"from_utf8|run_utf8_validation|Searcher")),
]
SAMPLE = re.compile(r"\s*([\d.]+)%\s+\[\.\]\s+JS:(.+)-(\d+)-(?:turbofan|liftoff)$")
UNNAMED = re.compile(r"^wasm-function\[(\d+)\]$")
LINE_WIDTH = 100


def leb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def function_names(module: bytes) -> dict[int, str]:
    """The `name` section's function names (subsection 1), by function index."""
    names: dict[int, str] = {}
    at = 8  # magic and version
    while at < len(module):
        section = module[at]
        size, start = leb128(module, at + 1)
        body, at = module[start:start + size], start + size
        if section != 0:
            continue
        length, pos = leb128(body, 0)
        if body[pos:pos + length] != b"name":
            continue
        pos += length
        while pos < len(body):
            kind = body[pos]
            sub_size, sub_start = leb128(body, pos + 1)
            sub, pos = body[sub_start:sub_start + sub_size], sub_start + sub_size
            if kind != 1:
                continue
            count, q = leb128(sub, 0)
            for _ in range(count):
                index, q = leb128(sub, q)
                length, q = leb128(sub, q)
                names[index] = sub[q:q + length].decode(errors="replace")
                q += length
    return names


def short(symbol: str) -> str:
    """A Rust symbol without its hash, mangling kept (readable enough, and exact)."""
    return re.sub(r"17h[0-9a-f]{16}E$", "", symbol)


def main() -> int:
    if len(sys.argv) > 2 or sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__, file=sys.stderr)
        return 2
    names = function_names(Path(sys.argv[1]).read_bytes()) if len(sys.argv) == 2 else {}
    shares: dict[str, float] = {}
    for line in sys.stdin:
        match = SAMPLE.match(line.rstrip("\n"))
        # V8's wasm-to-js call stubs (host calls) are not the module's code; JavaScript
        # functions (the stand-in host) have no index suffix.
        if match is None or match.group(2).startswith("wasm-to-js"):
            continue
        name = match.group(2)
        unnamed = UNNAMED.match(name)
        if unnamed:
            name = names.get(int(unnamed.group(1)), name)
        name = short(name)
        shares[name] = shares.get(name, 0.0) + float(match.group(1))
    total = sum(shares.values())
    if total == 0:
        print("no Wasm function in the report (perf record node --perf-basic-prof ...?)", file=sys.stderr)
        return 1
    print(f"module code: {total:.1f} % of all samples; shares below are of the module's")
    for label, pattern in GROUPS:
        part = sum(share for name, share in shares.items() if pattern.search(name))
        print(f"  {100 * part / total:5.1f} %  {label}")
    print()
    for name, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        if 100 * share / total < 0.5:
            break
        print(f"  {100 * share / total:5.1f} %  {name[:LINE_WIDTH]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
