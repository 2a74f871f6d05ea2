// The Wasm side of one cached request, in V8 without Envoy: `make bench` runs this on the
// empty filter and on mesh-oauth to separate the module's own work from Envoy's. Node (V8)
// instantiates the module with a stand-in proxy-wasm host that answers from memory and counts
// host calls, replays the same allowed request many times, and prints one JSON line:
//   node bench/hotpath.mjs MODULE FIXTURE [iterations] [rounds]
// FIXTURE: {"config": plugin configuration JSON, "token": a token the configuration accepts,
// optional "path", "method", "authority" of the request (default GET / on 127.0.0.1:10000),
// optional "tokens": a pool sent in turn instead of "token" (more than 22,048, so that each
// timed request is first-seen; see the warm-up below), optional "host_verifies": true to answer Envoy's `verify_signature`
// foreign function with Node's crypto (OpenSSL) as Envoy does with BoringSSL; the time spent in
// it is printed as host_verify_us, so min_us minus it is the module's own work}.
// Outbound (issue 29): optional "env" ({name: value}, the VM's environment: client secrets) and
// "answers" ({":path" of a call: {"status", "body"}}): the stand-in answers the module's calls
// (discovery, token endpoint) from them, 404 otherwise, and the first requests wait until the
// token is in (a request the module holds is asked about again after each answer).
// Also printed: how long the configuration took to load (proxy_on_configure) and the VM's
// linear memory once loaded and after the requests.
// Per request: the minimum over rounds of the mean time (other work only adds time), and host
// calls by kind.
// To weigh a change to the module's own work on a busy machine: HOTPATH_CPU_TIME=1 times the
// process's CPU time instead of the wall clock (time spent descheduled is left out), and
// HOTPATH_MEMO_VERIFY=1 answers a `verify_signature` call seen before from memory, so that with
// a pool the warm-up has gone through, the time is the module's own plus a small constant. The stand-in host's own JavaScript is included (small: its answers are
// serialized once).
import fs from "node:fs";
import crypto from "node:crypto";
const [,, path, fixturePath, itArg, roundArg] = process.argv;
const fx = JSON.parse(fs.readFileSync(fixturePath));
const enc = new TextEncoder(), dec = new TextDecoder();
let inst, mem = () => new DataView(inst.exports.memory.buffer), u8 = () => new Uint8Array(inst.exports.memory.buffer);
const counts = {};
const count = (n) => { counts[n] = (counts[n] || 0) + 1; };
function give(bytes, retPtr, retSize) {
  const p = inst.exports.proxy_on_memory_allocate(bytes.length);
  u8().set(bytes, p);
  mem().setUint32(retPtr, p, true); mem().setUint32(retSize, bytes.length, true);
}
const str = (p, n) => dec.decode(u8().subarray(p, p + n));
let headers = []; let serialized; const removed = new Set();
function serialize(pairs) {
  let size = 4 + pairs.length * 8;
  const enc2 = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
  for (const [k, v] of enc2) size += k.length + v.length + 2;
  const out = new Uint8Array(size); const dv = new DataView(out.buffer);
  dv.setUint32(0, pairs.length, true);
  let o = 4; for (const [k, v] of enc2) { dv.setUint32(o, k.length, true); dv.setUint32(o + 4, v.length, true); o += 8; }
  for (const [k, v] of enc2) { out.set(k, o); o += k.length + 1; out.set(v, o); o += v.length + 1; }
  return out;
}
const config = enc.encode(fx.config);
// Calls made and not yet answered ([token, answer]), and the answer being read.
const calls = []; let nextCall = 1; let answering = null;
function parsePairs(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getUint32(0, true); const sizes = []; let o = 4;
  for (let i = 0; i < n; i++) { sizes.push([dv.getUint32(o, true), dv.getUint32(o + 4, true)]); o += 8; }
  const out = [];
  for (const [k, v] of sizes) { const name = dec.decode(bytes.subarray(o, o + k)); o += k + 1;
    out.push([name, dec.decode(bytes.subarray(o, o + v))]); o += v + 1; }
  return out;
}
const environ = Object.entries(fx.env || {}).map(([k, v]) => enc.encode(`${k}=${v}\0`));
const memoVerify = process.env.HOTPATH_MEMO_VERIFY === "1", verifyMemo = new Map();
const cpuTime = process.env.HOTPATH_CPU_TIME === "1";
const shared = new Map(); let metricId = 1; let local = null; let hostVerifyNs = 0n; const publicKeys = new Map();
// Length-delimited fields only (what VerifySignatureArguments holds): field number -> bytes.
function protobufFields(bytes) {
  const out = {}; let o = 0;
  const varint = () => { let v = 0, s = 0, b; do { b = bytes[o++]; v += (b & 0x7f) * 2 ** s; s += 7; } while (b & 0x80); return v; };
  while (o < bytes.length) { const key = varint(); const n = varint(); out[key >> 3] = bytes.subarray(o, o + n); o += n; }
  return out;
}
const env = {
  proxy_log: (l, p, n) => { count("log"); if (process.env.LOG) console.log("log", l, str(p, n)); return 0; },
  proxy_get_buffer_bytes: (t, start, max, rp, rs) => {
    count("get_buffer");
    if (t === 7) { give(config, rp, rs); return 0; }
    if (t === 4) { give(enc.encode(answering.body).subarray(start, start + max), rp, rs); return 0; }
    return 1;
  },
  proxy_get_header_map_pairs: (t, rp, rs) => {
    count("get_map_pairs");
    give(t === 6 ? serialize([[":status", String(answering.status)]]) : serialized, rp, rs);
    return 0;
  },
  proxy_get_header_map_value: (t, kp, kn, rp, rs) => { count("get_map_value"); const k = str(kp, kn); const h = headers.find(([n]) => n === k); if (!h) return 1; give(enc.encode(h[1]), rp, rs); return 0; },
  proxy_remove_header_map_value: (t, kp, kn) => { count("remove_header"); removed.add(str(kp, kn)); return 0; },
  // Envoy's byteSize(): every name and value, less the fields removed in this request.
  proxy_get_header_map_size: (t, rp) => {
    count("get_map_size");
    let size = 0; for (const [k, v] of headers) if (!removed.has(k)) size += k.length + v.length;
    mem().setUint32(rp, size, true); return 0;
  },
  proxy_replace_header_map_value: () => { count("replace_header"); return 0; },
  proxy_add_header_map_value: () => { count("add_header"); return 0; },
  proxy_set_header_map_pairs: () => 0,
  proxy_get_current_time_nanoseconds: (rp) => { count("time"); mem().setBigUint64(rp, BigInt(Date.now()) * 1000000n, true); return 0; },
  proxy_define_metric: (t, p, n, rp) => { count("define_metric"); mem().setUint32(rp, metricId++, true); return 0; },
  proxy_increment_metric: () => { count("increment_metric"); return 0; },
  proxy_record_metric: () => { count("record_metric"); return 0; },
  proxy_get_shared_data: (kp, kn, rp, rs, cp) => { count("get_shared"); const v = shared.get(str(kp, kn)); if (!v) return 1; give(v[0], rp, rs); mem().setUint32(cp, v[1], true); return 0; },
  proxy_set_shared_data: (kp, kn, vp, vn, cas) => { count("set_shared"); cas >>>= 0; /* an i32 from Wasm: 0xffffffff is -1 */ const k = str(kp, kn); const v = shared.get(k); if (cas !== 0 && (v ? v[1] : 0) !== cas && !(cas === 0xffffffff && !v)) return 8; shared.set(k, [u8().slice(vp, vp + vn), (v ? v[1] : 0) + 1]); return 0; },
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_send_local_response: (status) => { count("local_response"); local = status; return 0; },
  proxy_http_call: (up, un, hp, hn, bp, bn, tp, tn, timeout, rp) => {
    count("http_call");
    if (!fx.answers) return 2;
    const pairs = parsePairs(u8().slice(hp, hp + hn));
    const path = (pairs.find(([n]) => n === ":path") || [])[1];
    const token = nextCall++;
    calls.push([token, fx.answers[path] || { status: 404, body: "" }]);
    if (process.env.LOG) console.log("call", path);
    mem().setUint32(rp, token, true);
    return 0;
  },
  proxy_call_foreign_function: (np, nn, ap, an, rp, rs) => {
    count("foreign");
    if (!fx.host_verifies || str(np, nn) !== "verify_signature") return 1;
    const raw = u8().slice(ap, ap + an);
    const memoKey = memoVerify ? Buffer.from(raw).toString("latin1") : null;
    const remembered = memoVerify && verifyMemo.get(memoKey);
    if (remembered) { give(remembered, rp, rs); return 0; }
    const f = protobufFields(raw);
    const t0 = process.hrtime.bigint();
    let valid = false;
    try {
      // Keys imported once: the stand-in's own cost stays small next to the module's.
      const spki = Buffer.from(f[2]).toString("base64");
      let key = publicKeys.get(spki);
      if (!key) { key = crypto.createPublicKey({ key: Buffer.from(f[2]), format: "der", type: "spki" }); publicKeys.set(spki, key); }
      valid = crypto.verify(dec.decode(f[1]), f[4], { key, dsaEncoding: "der" }, f[3]);
    } catch { valid = false; }
    hostVerifyNs += process.hrtime.bigint() - t0;
    const answer = valid ? Uint8Array.of(8, 1) : new Uint8Array(0);
    if (memoVerify) verifyMemo.set(memoKey, answer);
    give(answer, rp, rs);
    return 0;
  },
  proxy_set_effective_context: () => 0, proxy_continue_stream: () => 0, proxy_close_stream: () => 0, proxy_done: () => 0,
  proxy_get_property: () => 1, proxy_set_property: () => 0, proxy_set_buffer_bytes: () => 0, proxy_get_status: () => 1,
};
for (const n of ["proxy_grpc_cancel","proxy_grpc_stream","proxy_grpc_close","proxy_grpc_call","proxy_grpc_send","proxy_dequeue_shared_queue","proxy_enqueue_shared_queue","proxy_resolve_shared_queue","proxy_register_shared_queue"]) env[n] = () => 1;
const wasi = {
  random_get: (p, n) => { crypto.randomFillSync(u8().subarray(p, p + n)); return 0; },
  environ_get: (ptrs, buf) => {
    for (const e of environ) { mem().setUint32(ptrs, buf, true); u8().set(e, buf); ptrs += 4; buf += e.length; }
    return 0;
  },
  environ_sizes_get: (a, b) => {
    mem().setUint32(a, environ.length, true); mem().setUint32(b, environ.reduce((n, e) => n + e.length, 0), true);
    return 0;
  },
  fd_write: (fd, iov, n, wp) => { mem().setUint32(wp, 0, true); return 0; }, proc_exit: (c) => { throw new Error("exit " + c); },
  clock_time_get: (id, prec, rp) => { mem().setBigUint64(rp, process.hrtime.bigint(), true); return 0; },
};
const mod = new WebAssembly.Module(fs.readFileSync(path));
const imports = { env, wasi_snapshot_preview1: wasi };
for (const i of WebAssembly.Module.imports(mod)) { const ns = imports[i.module]; if (!(i.name in ns)) { ns[i.name] = () => { throw new Error("missing " + i.name); }; } }
inst = new WebAssembly.Instance(mod, imports);
const x = inst.exports;
x._initialize && x._initialize();
x.proxy_on_context_create(1, 0);
x.proxy_on_vm_start && x.proxy_on_vm_start(1, 0);
const configureStart = process.hrtime.bigint();
if (!x.proxy_on_configure(1, config.length)) throw new Error("configure failed");
const configureMs = Number(process.hrtime.bigint() - configureStart) / 1e6;
const memoryConfigured = x.memory.buffer.byteLength;
x.proxy_on_tick(1);
// Answers the calls made so far (in the root context, where the module dispatches them), then
// lets the root dispatch what the answers led to: until no call is left.
function settle() {
  for (let i = 0; i < 10 && calls.length; i++) {
    while (calls.length) {
      const [token, answer] = calls.shift(); answering = answer;
      x.proxy_on_http_call_response(1, token, 1, enc.encode(answer.body).length, 0);
    }
    x.proxy_on_tick(1);
  }
}
// The module starts its fetches (discovery) from a tick, not at once: tick until they are in.
const pause = new Int32Array(new SharedArrayBuffer(4));
for (let i = 0; fx.answers && i < 100 && !counts.http_call; i++) { Atomics.wait(pause, 0, 0, 10); x.proxy_on_tick(1); }
settle();
const headersFor = (token) => [[":authority", fx.authority || "127.0.0.1:10000"], [":path", fx.path || "/"],
  [":method", fx.method || "GET"], [":scheme", "http"], ["authorization", "Bearer " + token],
  ["x-forwarded-proto", "http"], ["x-request-id", crypto.randomUUID()]];
// Serialized once each, so the stand-in host's work per request stays the same either way.
const pool = (fx.tokens || [fx.token]).map((t) => { const h = headersFor(t); return [h, serialize(h)]; });
let ctx = 2;
function request() {
  const id = ctx++;
  [headers, serialized] = pool[id % pool.length]; removed.clear();
  x.proxy_on_context_create(id, 1);
  const a = x.proxy_on_request_headers(id, headers.length, 1);
  if (a !== 0 || local !== null) throw new Error("not allowed: action " + a + " local " + local);
  x.proxy_on_response_headers(id, 2, 1);
  x.proxy_on_log(id); x.proxy_on_done(id); x.proxy_on_delete(id);
}
const iterations = Number(itArg || 20000), rounds = Number(roundArg || 15);
if (fx.answers) {
  // The first request waits for the token: it is held, the root calls, the answer resumes it.
  const id = ctx++;
  [headers, serialized] = pool[0];
  x.proxy_on_context_create(id, 1);
  x.proxy_on_request_headers(id, headers.length, 1);
  x.proxy_on_tick(1); settle();
  x.proxy_on_done(id); x.proxy_on_delete(id);
}
// A pool is sent through once, and 2,048 more, before the timed runs: each timed token's last
// sighting is then a whole pool ago (the token cache, which admits a token seen twice once it is
// full, has forgotten it), and the timed runs start past the tokens the cache took while it
// still had room (the default 1,024), so that a pool larger than 22,048 stays first-seen.
const warmups = fx.tokens ? Math.max(20000, fx.tokens.length + 2048) : 20000;
for (let i = 0; i < warmups; i++) request();
for (const k in counts) delete counts[k];
hostVerifyNs = 0n;
const times = [];
for (let r = 0; r < rounds; r++) {
  const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
  for (let i = 0; i < iterations; i++) request();
  const cpu = process.cpuUsage(c0);
  const ns = cpuTime ? (cpu.user + cpu.system) * 1000 : Number(process.hrtime.bigint() - t0);
  times.push(ns / iterations);
}
times.sort((a, b) => a - b);
const per = Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, +(v / (iterations * rounds)).toFixed(2)]));
console.log(JSON.stringify({ module: path.split("/").pop(), min_us: times[0] / 1000,
  median_us: times[times.length >> 1] / 1000, host_calls: per, configure_ms: configureMs,
  host_verify_us: Number(hostVerifyNs) / 1000 / (iterations * rounds),
  memory_configured: memoryConfigured, memory_after: x.memory.buffer.byteLength }));
