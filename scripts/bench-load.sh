#!/usr/bin/env bash
# `make bench-load`: whole-process load test of tenant-edge against nginx, HAProxy, a bare
# Pingora proxy and the bare upstream, all in one run, all on 127.0.0.1.
#
#   upstream    nginx answering `200 ok` (HTTP/1.1 keep-alive; an h2c port for the h2 row)
#   nginx       TLS with a static ECDSA P-256 certificate, 2 workers, HTTP/2, upstream keep-alive
#   haproxy     `haproxy -db` (foreground, one process), nbthread 2, nginx's certificate (leaf and
#               key in one PEM), ALPN h2 and http/1.1, TLS 1.2 and 1.3, X-Forwarded-* headers,
#               `http-reuse always` to the upstream, no logging (bench/haproxy.cfg.template)
#   pingora     target/release/examples/bare_pingora: the smallest Pingora TLS proxy (nginx's
#               static certificate, the same upstream and X-Forwarded-* headers, no callback,
#               metrics or health checks), run with 2 threads the way tenant-edge runs them
#               (BENCH_PINGORA_MODE "percore lean timeouts": one single-thread service per
#               core on its own SO_REUSEPORT socket, tenant-edge's listener buffers, and the
#               body-read and send timeouts tenant-edge and nginx arm on every request): the
#               floor Pingora itself sets with the same settings, so the table tells Pingora's
#               cost per request from what tenant-edge adds
#   edge        target/release/tenant-edge (honours CARGO_TARGET_DIR), threads 2, internal CA,
#               the certificate warmed by one curl first, RUST_LOG=warn, the access log on (the
#               default: stdout, which goes to edge.log, a file write like journald's)
#   edge-nolog  the same with `access_log: {enabled: false}` (its own ports and data dir): the
#               difference is what the access log costs
#
# Measurements, each ~BENCH_DURATION s after a BENCH_WARMUP s warm-up of the same load:
#   a1. new connections/s, full handshakes: h2load --h1 in bursts of BENCH_BURST clients that
#       each open one connection and send one request (h2load never resumes a TLS session, so
#       every connection runs the edge's certificate callback)
#   a2. new connections/s, resumed: wrk -H "Connection: close". wrk keeps each connection's TLS
#       session, so after the first one its reconnects are resumed handshakes (tickets) that
#       skip the certificate callback; the edge's own counters (the table's note column:
#       full and resumed handshakes during that measurement) show it
#   b.  HTTP/1.1 keep-alive req/s: wrk (its p99 latency is kept too)
#   c.  HTTP/2 req/s: h2load -c 10 -m 10
#   m.  memory per idle keep-alive connection: scripts/idle-conns.py opens BENCH_IDLE TLS
#       connections (one request each, then idle), then a second batch of BENCH_IDLE beside
#       them; the server's resident memory (RSS of its process tree) grows by the figure while
#       the second batch opens (the first one also pays for first pages and per-thread caches,
#       and varies with what ran before); first round only (not for edge-nolog: the access
#       log idles too); target for the edge: at most 20,000 bytes
#   i.  instructions per request (once; nginx, pingora, edge and edge-nolog): a separate
#       instance of each under `valgrind --tool=callgrind --instr-atstart=no` (own ports; nginx
#       as one process; the edges: own config and data dir, access log as default or off),
#       warmed by curl and 200 requests, then instrumentation on (callgrind_control -i on) for
#       exactly BENCH_CALLGRIND_REQUESTS HTTP/1.1 keep-alive requests on one connection
#       (h2load --h1 -c 1 -m 1), off, dumped; then the same over HTTP/2 (h2load -c 1 -m 10);
#       then BENCH_CALLGRIND_HANDSHAKES (100) connections of one request each, every one a full
#       handshake, then wrk -H 'Connection: close' for 10 s (resumed handshakes: the
#       handshakes' instructions, where CPU figures are noisy). Instructions
#       (Ir) / requests; callgrind runs the threads one at a time, which changes no
#       instruction count. Target: edge /
#       pingora at most 1.05 (HTTP/1.1; HTTP/2 and edge-nolog reported: nginx and HAProxy
#       run with no log, so edge-nolog is the like-for-like row). Skipped without valgrind
#   k.  10,000 cached certificates (once): a separate edge (own ports and data dir, access log
#       and per-client new-name limit off, tls.cache_capacity 20,000) gets BENCH_CERTS names
#       k0.BENCH_NAME … each issued by the internal CA in a first handshake
#       (scripts/handshakes.py --warm, 4 threads, progress shown); its RSS and
#       tenant_edge_certificates_cached are read before and after. Then full handshakes
#       (scripts/handshakes.py: no tickets, no session reuse, handshake only) for
#       BENCH_DURATION s round-robin over all the names, and the same on one name, with the
#       edge's CPU per handshake. Targets: round-robin / one name at least 0.95, RSS per cached
#       certificate at most 10,240 bytes
# Besides the rate, each row has the server's CPU time per request (user+system of its
# process tree): on a small machine the load generator shares the cores, so CPU/request is
# the steadier comparison. The targets (edge against nginx): a1, a2 CPU per connection at most
# 1.05×; b CPU per request at most 2.0× (aimed at 1.5×), rate at least 0.55×, p99 at most
# 2.0×; c CPU per request at most 1.6× (aimed at 1.3×), rate at least 0.7×.
# Raw outputs, configs and logs go to bench-results/<time>/ (git-ignored); the table is printed
# and saved as summary.txt there.
#
# wrk and h2load take the TLS server name from the URL and cannot be told where to connect, so
# the name (BENCH_NAME, default bench.localhost) must resolve to 127.0.0.1. When it does not
# (glibc without nss-myhostname does not resolve *.localhost), one line is appended to
# /etc/hosts if it is writable; that is the only thing here that may need root. (k needs no
# resolution: scripts/handshakes.py connects to 127.0.0.1 and only sends the names as SNI.)
#
# Knobs: BENCH_DURATION (10), BENCH_WARMUP (2), BENCH_CONNECTIONS (50, wrk), BENCH_THREADS
# (2, wrk), BENCH_BURST (500, a1), BENCH_NAME (bench.localhost), BENCH_STRICT (0; 1: exit 3
# when a target is missed), BENCH_ROUNDS (1; N: run a1 a2 b c N times, the table keeps
# each server's best round: on a shared machine noise only ever makes numbers worse),
# BENCH_EDGE_ENV (extra VAR=value for every edge instance), BENCH_SERVERS ("upstream nginx
# haproxy pingora edge edge-nolog": the servers measured, in that order; nginx and edge are
# needed for the targets), BENCH_ONLY ("a1 a2 b c m i k": the measurements run),
# BENCH_IDLE (2000, m), BENCH_PINGORA_MODE ("percore lean timeouts": bare_pingora's arguments after
# THREADS: steal, nosteal or percore, optionally followed by lean), BENCH_CALLGRIND_REQUESTS
# (2000, i), BENCH_CALLGRIND_HANDSHAKES (100, i; run 10 at a time), BENCH_CERTS (10000, k), BENCH_HANDSHAKE_THREADS (4, k), CARGO_TARGET_DIR (target).
# Needs: wrk, h2load, nginx, haproxy, openssl, curl, python3, valgrind (for i)
# (apt-get install -y wrk nghttp2-client nginx haproxy openssl curl python3 valgrind).
#
# `scripts/bench-load.sh --table bench-results/TIME` prints that run's table again.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

duration=${BENCH_DURATION:-10}
warmup=${BENCH_WARMUP:-2}
conns=${BENCH_CONNECTIONS:-50}
threads=${BENCH_THREADS:-2}
burst=${BENCH_BURST:-500}
rounds=${BENCH_ROUNDS:-1}
name=${BENCH_NAME:-bench.localhost}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
edge_bin=$target_dir/release/tenant-edge
bare_bin=$target_dir/release/examples/bare_pingora
servers=${BENCH_SERVERS:-upstream nginx haproxy pingora edge edge-nolog}
measurements=${BENCH_ONLY:-a1 a2 b c m i k}
idle=${BENCH_IDLE:-2000}
pingora_mode=${BENCH_PINGORA_MODE:-percore lean timeouts}
cg_requests=${BENCH_CALLGRIND_REQUESTS:-2000}
cg_handshakes=${BENCH_CALLGRIND_HANDSHAKES:-100}
cert_names=${BENCH_CERTS:-10000}
hs_threads=${BENCH_HANDSHAKE_THREADS:-4}
wants() { case " $servers " in *" $1 "*) return 0 ;; esac; return 1; }
measures() { case " $measurements " in *" $1 "*) return 0 ;; esac; return 1; }

die() {
  echo "bench-load: $*" >&2
  exit 1
}
say() { echo "bench-load: $*" >&2; }

# The table from rows.tsv (every round); exit status 3 when the edge misses a target.
render_table() {
  awk -F '\t' '
    function title(k) {
      if (k == "a1") return "a1. new conns/s, full TLS handshake (h2load)"
      if (k == "a2") return "a2. new conns/s, resumed TLS (wrk close)"
      if (k == "b") return "b.  HTTP/1.1 keep-alive req/s (wrk)"
      return "c.  HTTP/2 req/s (h2load -c10 -m10)"
    }
    function short(k) {
      if (k == "a1") return "a1. full handshakes"
      if (k == "a2") return "a2. resumed TLS"
      if (k == "b") return "b.  HTTP/1.1 keep-alive"
      return "c.  HTTP/2"
    }
    # Never index rate[k, s] without has(): awk creates what it reads.
    function has(k, s) { return (k, s) in rate }
    function per(k, s) { return has(k, s) && reqs[k, s] > 0 ? cpu[k, s] / reqs[k, s] : 0 }
    # Edge over server s; -1 when either is missing.
    function cpu_x(k, s) { return per(k, "edge") > 0 && per(k, s) > 0 ? per(k, "edge") / per(k, s) : -1 }
    function rate_x(k, s) { return has(k, "edge") && has(k, s) && rate[k, s] > 0 ? rate[k, "edge"] / rate[k, s] : -1 }
    function lat_x(k, s,   e, o) {
      if (!has(k, "edge") || !has(k, s)) return -1
      e = lat_us(lat[k, "edge"]); o = lat_us(lat[k, s])
      return e > 0 && o > 0 ? e / o : -1
    }
    # wrk latency "3.21ms(p99)" in microseconds; -1 when it is not a p99 (h2load: a mean).
    function lat_us(v,   n) {
      if (v !~ /\(p99\)$/) return -1
      sub(/\(p99\)$/, "", v)
      n = v + 0
      if (v ~ /us$/) return n
      if (v ~ /ms$/) return n * 1000
      if (v ~ /m$/) return n * 60e6
      if (v ~ /h$/) return n * 3600e6
      if (v ~ /s$/) return n * 1e6
      return -1
    }
    function fmt(v) { return v < 0 ? "-" : sprintf("%.2f", v) }
    # One target line; counts a miss (or edge errors) in fails.
    function target(k, what, v, op, t,   ok, bad, lim) {
      lim = op " " sprintf("%.2f", t)
      if (v < 0) {
        printf "%-24s %-32s %8s %9s  %s\n", short(k), what, "-", lim, "n/a (needs nginx and edge rows)"
        return
      }
      v = sprintf("%.2f", v) + 0
      ok = op == "<=" ? v <= t : v >= t
      bad = has(k, "edge") && errs[k, "edge"] > 0
      if (bad) ok = 0
      if (!ok) fails++
      printf "%-24s %-32s %8.2f %9s  %s\n", short(k), what, v, lim, (ok ? "PASS" : "FAIL") (bad ? " (edge errors)" : "")
    }
    function aim(k, what, v, t) {
      if (v < 0) return
      v = sprintf("%.2f", v) + 0
      printf "%-24s %-32s %8.2f %9s  %s\n", short(k), what, v, "<= " sprintf("%.2f", t), (v <= t ? "info: reached" : "info: not yet")
    }
    # Each server keeps its best round (highest rate) per measurement.
    !(($1, $2) in rate) || $3 + 0 > rate[$1, $2] + 0 {
      rate[$1, $2] = $3; reqs[$1, $2] = $4; errs[$1, $2] = $5; lat[$1, $2] = $6; cpu[$1, $2] = $7
      note[$1, $2] = $8; seen[$1] = 1
    }
    $9 + 0 > nrounds { nrounds = $9 + 0 }
    END {
      n = split("a1 a2 b c", keys, " "); ns = split("upstream nginx haproxy pingora edge edge-nolog", servers, " ")
      printf "%-46s %-10s %10s %9s %6s %15s %10s  %s\n", "measurement", "server", "rate/s", "requests", "errors", "latency", "CPU us/req", "note"
      for (i = 1; i <= n; i++) {
        k = keys[i]
        if (!(k in seen)) continue
        first = 1
        for (j = 1; j <= ns; j++) {
          s = servers[j]
          if (!has(k, s)) continue
          c = reqs[k, s] > 0 ? sprintf("%.1f", cpu[k, s] * 1e6 / reqs[k, s]) : "-"
          printf "%-46s %-10s %10.0f %9d %6d %15s %10s  %s\n", (first ? title(k) : ""), s, rate[k, s], reqs[k, s], errs[k, s], lat[k, s], c, (note[k, s] == "-" ? "" : note[k, s])
          first = 0
        }
      }
      print ""
      printf "%-24s %8s %8s %8s %8s %8s %8s %9s %8s\n", "ratio: edge / other", "rate/ngx", "rate/up", "rate/pgr", "CPU/ngx", "CPU/hap", "CPU/pgr", "CPU/nolog", "p99/ngx"
      for (i = 1; i <= n; i++) {
        k = keys[i]
        if (!(k in seen)) continue
        printf "%-24s %8s %8s %8s %8s %8s %8s %9s %8s\n", short(k), fmt(rate_x(k, "nginx")), fmt(rate_x(k, "upstream")), fmt(rate_x(k, "pingora")), fmt(cpu_x(k, "nginx")), fmt(cpu_x(k, "haproxy")), fmt(cpu_x(k, "pingora")), fmt(cpu_x(k, "edge-nolog")), fmt(lat_x(k, "nginx"))
      }
      print ""
      printf "%-24s %-32s %8s %9s  %s\n", "target (edge / nginx)", "", "value", "target", "verdict"
      fails = 0
      for (i = 1; i <= n; i++) {
        k = keys[i]
        if (!(k in seen)) continue
        if (k == "a1" || k == "a2") target(k, "CPU per connection", cpu_x(k, "nginx"), "<=", 1.05)
        if (k == "b") {
          target(k, "CPU per request", cpu_x(k, "nginx"), "<=", 2.0)
          aim(k, "CPU per request, aimed at", cpu_x(k, "nginx"), 1.5)
          target(k, "rate", rate_x(k, "nginx"), ">=", 0.55)
          target(k, "p99 latency", lat_x(k, "nginx"), "<=", 2.0)
        }
        if (k == "c") {
          target(k, "CPU per request", cpu_x(k, "nginx"), "<=", 1.6)
          aim(k, "CPU per request, aimed at", cpu_x(k, "nginx"), 1.3)
          target(k, "rate", rate_x(k, "nginx"), ">=", 0.7)
        }
      }
      print ""
      print "CPU us/req: user+system CPU of that server process tree (nginx: master + workers; haproxy:"
      print "one process, 2 threads) per request (a1, a2: per connection). CPU/ngx, CPU/hap, CPU/pgr,"
      print "CPU/nolog: edge CPU per request over that of nginx, haproxy, pingora, edge-nolog (the last"
      print "one is what the access log costs). p99/ngx: wrk p99 latency, edge over nginx (b only)."
      print "The load generators share the cores with the servers, so a rate ratio mixes the cost of the"
      print "server with that of the client; the CPU ratio compares the servers alone."
      print "Upstream rows are plain HTTP (a1, a2: new TCP connections; c: h2c), a ceiling, not a target."
      print "Pingora rows: examples/bare_pingora.rs, the smallest Pingora proxy for the same job (static"
      print "certificate, no callback, metrics or health checks) run like the edge: the floor under it."
      if (nrounds > 1) print "Best of " nrounds " rounds per server and measurement; every round is in rows.tsv."
      exit (fails > 0 ? 3 : 0)
  }' "$1"
}

# The m, i and k sections from idle.tsv, callgrind.tsv and certs.tsv in DIR (those present);
# exit status 3 when the edge misses a target there.
render_extra() { # dir
  local dir=$1 rc=0
  if [ -s "$dir/idle.tsv" ]; then
    # idle.tsv: server, RSS with the first batch open, RSS with both open (KiB), round,
    # connections per batch (older runs: none), RSS before either
    awk -F '\t' -v n="$idle" '
      { c = NF >= 5 && $5 > 0 ? $5 : n; best[$1] = ($3 - $2) * 1024 / c; conns = c }
      END {
        print ""
        printf "%-46s %-10s %10s %9s  %s\n", "m.  memory per idle keep-alive TLS connection", "server", "bytes", "target", "verdict"
        ns = split("nginx haproxy pingora edge edge-nolog", order, " ")
        for (i = 1; i <= ns; i++) {
          s = order[i]
          if (!(s in best)) continue
          if (s == "edge") {
            ok = best[s] <= 20000
            printf "%-46s %-10s %10.0f %9s  %s\n", "", s, best[s], "<= 20000", (ok ? "PASS" : "FAIL")
          } else printf "%-46s %-10s %10.0f\n", "", s, best[s]
        }
        if (("nginx" in best) && ("edge" in best) && best["nginx"] > 0)
          printf "%-46s %-10s %10.2f\n", "", "edge/nginx", best["edge"] / best["nginx"]
        printf "(RSS of the process tree: growth while a second batch of %d connections is held open\n", conns
        printf "beside a first one)\n"
        exit (("edge" in best) && !ok ? 3 : 0)
      }' "$dir/idle.tsv" || rc=3
  fi
  if [ -s "$dir/callgrind.tsv" ]; then
    # callgrind.tsv: server, protocol (h1, h2; hs, rs: one connection per request, full or
    # resumed handshake), instructions (Ir), requests
    awk -F '\t' '
      { ir[$1, $2] = $3; n[$1, $2] = $4 }
      function per(s, p) { return ((s, p) in ir) && n[s, p] > 0 ? ir[s, p] / n[s, p] : -1 }
      END {
        print ""
        printf "%-46s %-10s %12s %12s %9s  %s\n", "i.  instructions per request (callgrind)", "server", "instr/req", "edge/pingora", "target", "verdict"
        fails = 0
        split("h1 h2", protos, " ")
        for (p = 1; p <= 2; p++) {
          pr = protos[p]
          label = pr == "h1" ? "HTTP/1.1, 1 connection (h2load --h1 -m 1)" : "HTTP/2, 1 connection (h2load -m 10)"
          if (per("pingora", pr) < 0 && per("edge", pr) < 0) continue
          if (per("pingora", pr) >= 0) printf "%-46s %-10s %12.0f\n", label, "pingora", per("pingora", pr)
          if (per("edge", pr) < 0) continue
          r = per("pingora", pr) > 0 ? sprintf("%.2f", per("edge", pr) / per("pingora", pr)) + 0 : -1
          if (r < 0) verdict = "n/a (needs the pingora row)"
          else if (pr == "h1") { verdict = r <= 1.05 ? "PASS" : "FAIL"; if (r > 1.05) fails++ }
          else verdict = r <= 1.05 ? "info: within" : "info: above"
          printf "%-46s %-10s %12.0f %12s %9s  %s\n", (per("pingora", pr) >= 0 ? "" : label), "edge", per("edge", pr), (r < 0 ? "-" : sprintf("%.2f", r)), "<= 1.05", verdict
          if (per("edge-nolog", pr) < 0) continue
          r = per("pingora", pr) > 0 ? sprintf("%.2f", per("edge-nolog", pr) / per("pingora", pr)) + 0 : -1
          printf "%-46s %-10s %12.0f %12s %9s  %s\n", "", "edge-nolog", per("edge-nolog", pr), (r < 0 ? "-" : sprintf("%.2f", r)), "", "info: no access log, as nginx and HAProxy here"
        }
        print "(instructions of the whole process, every thread, while the requests ran, over the requests;"
        print "one full TLS handshake included; the target applies to HTTP/1.1, HTTP/2 is reported)"
        # nginx (one process) and the handshakes: reported, no target (the targets are on CPU).
        if (per("nginx", "h1") >= 0 || per("edge", "hs") >= 0) {
          print ""
          printf "%-46s %-10s %12s %12s %12s\n", "i.  nginx, and full handshakes (callgrind)", "server", "instr", "edge/nginx", "edge/pingora"
          split("h1 h2 hs rs", protos, " ")
          for (p = 1; p <= 4; p++) {
            pr = protos[p]
            label = pr == "h1" ? "per HTTP/1.1 request" : pr == "h2" ? "per HTTP/2 request" : pr == "hs" ? "per connection: full handshake + 1 request" : "per connection: resumed handshake + 1 request"
            first = 1
            split("nginx pingora edge edge-nolog", ss, " ")
            for (k = 1; k <= 4; k++) {
              sv = ss[k]
              if (per(sv, pr) < 0) continue
              rn = per("nginx", pr) > 0 && sv != "nginx" ? sprintf("%.2f", per(sv, pr) / per("nginx", pr)) : "-"
              rp = per("pingora", pr) > 0 && sv ~ /^edge/ ? sprintf("%.2f", per(sv, pr) / per("pingora", pr)) : "-"
              printf "%-46s %-10s %12.0f %12s %12s\n", (first ? label : ""), sv, per(sv, pr), rn, rp
              first = 0
            }
          }
          print "(nginx: one process, master_process off; full handshakes: h2load --h1, one connection per"
          print "request, no session resumed, ECDSA P-256; resumed: wrk -c4 -H '"'"'Connection: close'"'"' for 10 s,"
          print "TLS 1.3 tickets; nginx links Debian'"'"'s OpenSSL, Pingora and the edge the vendored one)"
        }
        exit (fails > 0 ? 3 : 0)
      }' "$dir/callgrind.tsv" || rc=3
  fi
  if [ -s "$dir/certs.tsv" ]; then
    # certs.tsv: key, value
    awk -F '\t' '
      { v[$1] = $2 }
      function rate(p) { return v[p "_seconds"] > 0 ? v[p "_handshakes"] / v[p "_seconds"] : 0 }
      function us(p) { return v[p "_handshakes"] > 0 ? sprintf("%.0f", v[p "_cpu"] * 1e6 / v[p "_handshakes"]) : "-" }
      END {
        fails = 0
        print ""
        printf "%-62s %10s %9s  %s\n", "k.  " v["names"] " cached certificates (full TLS handshakes, " v["threads"] " threads)", "value", "target", "verdict"
        printf "%-62s %10.0f %9s  %s\n", "    handshakes/s, round-robin over all names", rate("rr"), "", (v["rr_errors"] > 0 ? v["rr_errors"] " errors" : "")
        printf "%-62s %10.0f %9s  %s\n", "    handshakes/s, one name", rate("one"), "", (v["one_errors"] > 0 ? v["one_errors"] " errors" : "")
        if (rate("one") > 0 && rate("rr") > 0) {
          r = sprintf("%.2f", rate("rr") / rate("one")) + 0
          ok = r >= 0.95 && v["rr_errors"] == 0 && v["one_errors"] == 0
          if (!ok) fails++
          printf "%-62s %10.2f %9s  %s\n", "    round-robin / one name", r, ">= 0.95", (ok ? "PASS" : "FAIL") (v["rr_errors"] + v["one_errors"] > 0 ? " (errors)" : "")
        } else {
          fails++
          printf "%-62s %10s %9s  %s\n", "    round-robin / one name", "-", ">= 0.95", "FAIL (no handshakes)"
        }
        printf "%-62s %10s\n", "    edge CPU us per handshake, round-robin", us("rr")
        printf "%-62s %10s\n", "    edge CPU us per handshake, one name", us("one")
        per = (v["rss_after"] - v["rss_before"]) * 1024 / v["names"]
        ok = per <= 10240 && v["warm_errors"] == 0
        if (!ok) fails++
        printf "%-62s %10.0f %9s  %s\n", "    RSS per cached certificate, bytes", per, "<= 10240", (ok ? "PASS" : "FAIL") (v["warm_errors"] > 0 ? " (" v["warm_errors"] " names not warmed)" : "")
        printf "    (RSS %d -> %d KiB, tenant_edge_certificates_cached %s -> %s, warming took %.0f s)\n", v["rss_before"], v["rss_after"], v["cached_before"], v["cached_after"], v["warm_seconds"]
        exit (fails > 0 ? 3 : 0)
      }' "$dir/certs.tsv" || rc=3
  fi
  return "$rc"
}

# `scripts/bench-load.sh --table bench-results/TIME`: print that run's table again.
if [ "${1:-}" = --table ]; then
  [ -f "${2:-}/rows.tsv" ] || die "usage: $0 --table bench-results/TIME"
  if [ -s "$2/rows.tsv" ]; then render_table "$2/rows.tsv" || true; fi
  render_extra "$2" || true
  exit 0
fi

# ------------------------------------------------------------------------------------------
# Prerequisites
# ------------------------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
for s in $servers; do
  case "$s" in
    upstream | nginx | haproxy | pingora | edge | edge-nolog) ;;
    *) die "BENCH_SERVERS: unknown server '$s' (upstream nginx haproxy pingora edge edge-nolog)" ;;
  esac
done
for m in $measurements; do
  case "$m" in a1 | a2 | b | c | m | i | k) ;; *) die "BENCH_ONLY: unknown measurement '$m' (a1 a2 b c m i k)" ;; esac
done
for v in cg_requests cert_names hs_threads idle; do
  case "${!v}" in '' | *[!0-9]* | 0) die "BENCH_CALLGRIND_REQUESTS, BENCH_CERTS, BENCH_HANDSHAKE_THREADS and BENCH_IDLE must be positive integers" ;; esac
done
case "$cg_handshakes" in '' | *[!0-9]* | [0-9]) die "BENCH_CALLGRIND_HANDSHAKES must be an integer of at least 10 (it runs 10 at a time)" ;; esac
missing=()
tools=(wrk h2load nginx openssl curl python3)
if wants haproxy; then tools+=(haproxy); fi
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "missing ${missing[*]}; install with: apt-get install -y wrk nghttp2-client nginx haproxy openssl curl python3"
fi
# i is skipped, not refused, without valgrind: the rest of the run does not need it.
callgrind_ok=1
if measures i; then
  for tool in valgrind callgrind_control; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      say "$tool not found (apt-get install -y valgrind): measurement i (callgrind) is skipped"
      callgrind_ok=0
    fi
  done
fi
[ -x "$edge_bin" ] || die "$edge_bin not found; build it first: cargo build --release --bins (or make bench-load)"
if wants pingora && [ ! -x "$bare_bin" ]; then
  die "$bare_bin not found; build it first: cargo build --release --example bare_pingora (or make bench-load)"
fi

case "$name" in
  *.localhost | *.tenant.test) ;;
  *) die "BENCH_NAME must be under .localhost or .tenant.test (the edge's allow-list in bench/edge.yaml.template)" ;;
esac
# wrk/h2load resolve the name themselves (getaddrinfo): it must give 127.0.0.1 and nothing else.
resolved=$(getent ahosts "$name" 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' ' || true)
if [ -z "$resolved" ]; then
  if [ -w /etc/hosts ]; then
    printf '127.0.0.1\t%s\t# added by tenant-edge scripts/bench-load.sh\n' "$name" >>/etc/hosts
    say "$name did not resolve: added '127.0.0.1 $name' to /etc/hosts (kept for later runs;"
    say "  remove with: sed -i '/added by tenant-edge scripts\\/bench-load.sh/d' /etc/hosts)"
    resolved=$(getent ahosts "$name" | awk '{print $1}' | sort -u | tr '\n' ' ')
  else
    die "$name does not resolve and /etc/hosts is not writable; add it once as root:
  echo '127.0.0.1 $name' | sudo tee -a /etc/hosts
or pick a name that resolves to 127.0.0.1 with BENCH_NAME (under .localhost or .tenant.test)"
  fi
fi
[ "$resolved" = "127.0.0.1 " ] ||
  die "$name resolves to '$resolved', not only 127.0.0.1; fix /etc/hosts or set BENCH_NAME"

# ------------------------------------------------------------------------------------------
# Work directory, results, cleanup
# ------------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/tenant-edge-bench.XXXXXX")
results=$repo/bench-results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$results" "$work/nginx-tmp" "$work/nginx-pki"

pids=()
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do
    # SIGINT: a fast shutdown for Pingora, nginx and HAProxy.
    kill -INT "$pid" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  # Logs and the generated configs are worth keeping next to the numbers.
  cp "$work"/*.conf "$work"/*.cfg "$work"/*.yaml "$work"/*.log "$results"/ 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_port
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

fill() { # template output [sed args…, applied before the common ones]
  local template=$1 out=$2
  shift 2
  sed "$@" \
    -e "s|@DIR@|$work|g" \
    -e "s|@NAME@|$name|g" \
    -e "s|@USER_LINE@|$user_line|g" \
    -e "s|@UPSTREAM_PORT@|$upstream_port|g" \
    -e "s|@UPSTREAM_H2C_PORT@|$upstream_h2c_port|g" \
    -e "s|@NGINX_PORT@|$nginx_port|g" \
    -e "s|@HAPROXY_PORT@|$haproxy_port|g" \
    -e "s|@EDGE_PORT@|$edge_port|g" \
    -e "s|@METRICS_PORT@|$metrics_port|g" \
    "$template" >"$out"
}

# edge_config instance https_port metrics_port: $work/INSTANCE.yaml, bench/edge.yaml.template
# with that instance's own ports, data dir (INSTANCE-data), pid file and upgrade socket, and
# whatever YAML comes on stdin appended (top-level sections the template does not have).
# `edge` is the template as it is.
edge_config() {
  local inst=$1 https=$2 metrics=$3 out="$work/$1.yaml" want
  fill bench/edge.yaml.template "$out" \
    -e "s|@DIR@/edge-data|@DIR@/$inst-data|g" \
    -e "s|@DIR@/edge\.pid|@DIR@/$inst.pid|g" \
    -e "s|@DIR@/edge-upgrade\.sock|@DIR@/$inst-upgrade.sock|g" \
    -e "s|@EDGE_PORT@|$https|g" \
    -e "s|@METRICS_PORT@|$metrics|g"
  cat >>"$out"
  # Two instances sharing a port, data dir, pid file or socket would spoil both: make sure
  # the template still has the lines rewritten above.
  for want in "data_dir: $work/$inst-data" "pid_file: $work/$inst.pid" \
    "upgrade_sock: $work/$inst-upgrade.sock" "https: 127.0.0.1:$https" "metrics: 127.0.0.1:$metrics"; do
    grep -qF "$want" "$out" ||
      die "bench/edge.yaml.template changed shape: no '$want' in $out (see edge_config)"
  done
  "$edge_bin" check --syntax-only -c "$out" >"$work/$inst-check.log" 2>&1 ||
    die "tenant-edge check rejects $out: $(cat "$work/$inst-check.log")"
}

# start_edge instance [wrapper command…]: run tenant-edge on $work/INSTANCE.yaml (stdout, the
# access log, and stderr to $work/INSTANCE.log); its pid in $REPLY.
start_edge() {
  local inst=$1
  shift
  # BENCH_EDGE_ENV: extra environment for the edge only, to try a change without rebuilding
  # (e.g. "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2" for another allocator).
  # shellcheck disable=SC2086 # word splitting of BENCH_EDGE_ENV is the point
  env RUST_LOG=warn ${BENCH_EDGE_ENV:-} "$@" "$edge_bin" run -c "$work/$inst.yaml" >"$work/$inst.log" 2>&1 &
  REPLY=$!
  pids+=("$REPLY")
}

# stop_pid pid [seconds]: SIGINT (a fast shutdown for Pingora, nginx and HAProxy), SIGKILL
# after SECONDS (5), reaped and dropped from the cleanup list.
stop_pid() {
  local pid=$1 p kept=()
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((${2:-5} * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
}

# listening port pid seconds: like wait_port (scripts/lib.sh), with more patience (valgrind
# starts slowly) and a status instead of dying.
listening() {
  for _ in $(seq 1 $(($3 * 10))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Resident memory (KiB) of a process and its children.
rss_of() {
  local total=0 pid
  for pid in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    [ -r "/proc/$pid/status" ] || continue
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}

# open_idle server port batch: start idle-conns.py holding $idle connections, its stdin on
# fd 7 (batch 1) or 8 (batch 2), and wait until all are open.
open_idle() {
  local server=$1 port=$2 batch=$3 fifo="$work/idle.$3.fifo" out="$results/m-$1-r$round-$3.txt"
  rm -f "$fifo"
  mkfifo "$fifo"
  python3 scripts/idle-conns.py 127.0.0.1 "$port" "$name" "$idle" <"$fifo" >"$out" 2>&1 &
  idle_clients+=("$!")
  if [ "$batch" = 1 ]; then exec 7>"$fifo"; else exec 8>"$fifo"; fi
  for _ in $(seq 1 1200); do
    grep -q '^ready' "$out" && break
    kill -0 "${idle_clients[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q '^ready' "$out"; then
    exec 7>&- 8>&-
    die "idle-conns.py did not open $idle connections to $server; see $out"
  fi
  sleep 1
}

# run_idle server pid port: memory per idle keep-alive TLS connection (bytes), into idle.tsv.
# Two batches of $idle connections, the second opened while the first is held: the second
# batch's growth is the figure (the first one also pays for the allocator's first pages and
# per-thread caches, which a server that has been running a while already has).
run_idle() {
  local server=$1 pid=$2 port=$3 before mid after
  idle_clients=()
  before=$(rss_of "$pid")
  open_idle "$server" "$port" 1
  mid=$(rss_of "$pid")
  open_idle "$server" "$port" 2
  after=$(rss_of "$pid")
  exec 7>&- 8>&- # closing their stdin makes them close the connections and exit
  wait "${idle_clients[@]}" 2>/dev/null || true
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$mid" "$after" "$round" "$idle" "$before" >>"$results/idle.tsv"
  say "m $server: $(((after - mid) * 1024 / idle)) bytes per idle connection, second batch ($before → $mid → $after KiB; first batch $(((mid - before) * 1024 / idle)))"
}

# CPU time (seconds, user+system) of a process and its children (nginx: master + workers).
cpu_of() {
  local total=0 pid
  for pid in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    [ -r "/proc/$pid/stat" ] || continue
    # Fields after the ")" that closes the command name: 12 = utime, 13 = stime (in ticks).
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# Percentage of the machine busy over 1 s (before a measurement: is someone else using it?).
busy_percent() {
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
  echo "$a $b" | awk '{busy = $3 - $1; idle = $4 - $2; printf "%d", (busy + idle > 0 ? 100 * busy / (busy + idle) : 0)}'
}

# An edge's completed handshakes so far, "full resumed" (from its /metrics).
edge_handshakes() { # metrics_port
  curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk '/^tenant_edge_tls_handshakes_completed_total/ {
           if ($0 ~ /resumed="true"/) r += $NF; else f += $NF
         } END { printf "%d %d", f, r }'
}

# One unlabelled series of an edge's /metrics ("-" when absent).
edge_metric() { # metrics_port name
  curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v m="$2" '$1 == m { v = $2 } END { print (v == "" ? "-" : v) }'
}

# ------------------------------------------------------------------------------------------
# Start: upstream, nginx (TLS), HAProxy, tenant-edge (with and without access log), bare Pingora
# ------------------------------------------------------------------------------------------
free_port
upstream_port=$REPLY
free_port
upstream_h2c_port=$REPLY
free_port
nginx_port=$REPLY
free_port
haproxy_port=$REPLY
free_port
edge_port=$REPLY
free_port
metrics_port=$REPLY
free_port
nolog_port=$REPLY
free_port
nolog_metrics_port=$REPLY
free_port
bare_port=$REPLY
# As root, nginx workers would switch to `nobody`, who cannot read the private work dir.
user_line=""
if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi

# The nginx certificate: a throwaway CA and an ECDSA P-256 leaf for $name (only the leaf is
# sent, as tenant-edge does with its internal CA). HAProxy and bare Pingora use it too.
(
  cd "$work/nginx-pki"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=tenant-edge bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
    -out ca.pem 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key 2>/dev/null
  openssl req -new -key leaf.key -subj "/CN=$name" -out leaf.csr 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$name" >leaf.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
    -days 2 -sha256 -extfile leaf.ext -out leaf.pem 2>/dev/null
  # HAProxy's `crt` wants the certificate and its key in one file.
  cat leaf.pem leaf.key >leaf-combined.pem
) || die "openssl could not generate the nginx certificate"

fill bench/nginx-upstream.conf.template "$work/nginx-upstream.conf"
fill bench/nginx-tls.conf.template "$work/nginx-tls.conf"
# What edge-nolog (and its callgrind twin) add to the template.
nolog_yaml='
# edge-nolog (scripts/bench-load.sh): the edge with its access log off; the difference from
# the `edge` rows is what the access log costs.
access_log:
  enabled: false'
edge_config edge "$edge_port" "$metrics_port" </dev/null
if wants edge-nolog; then
  edge_config edge-nolog "$nolog_port" "$nolog_metrics_port" <<<"$nolog_yaml"
fi

nginx -p "$work/" -e "$work/nginx-upstream.startup.log" -c "$work/nginx-upstream.conf" &
upstream_pid=$!
pids+=("$upstream_pid")
wait_port "$upstream_port" "$upstream_pid" "the upstream nginx"

nginx -p "$work/" -e "$work/nginx-tls.startup.log" -c "$work/nginx-tls.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
wait_port "$nginx_port" "$nginx_pid" "nginx (TLS)"

haproxy_pid=""
if wants haproxy; then
  fill bench/haproxy.cfg.template "$work/haproxy.cfg"
  haproxy -c -f "$work/haproxy.cfg" >"$work/haproxy-check.log" 2>&1 ||
    die "haproxy rejects $work/haproxy.cfg: $(cat "$work/haproxy-check.log")"
  # -db: foreground, no master process: the pid is HAProxy itself (all its threads).
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  haproxy_pid=$!
  pids+=("$haproxy_pid")
  wait_port "$haproxy_port" "$haproxy_pid" "haproxy"
fi

start_edge edge
edge_pid=$REPLY
wait_port "$edge_port" "$edge_pid" "tenant-edge"

nolog_pid=""
if wants edge-nolog; then
  start_edge edge-nolog
  nolog_pid=$REPLY
  wait_port "$nolog_port" "$nolog_pid" "tenant-edge (edge-nolog)"
fi

# start_bare port log [wrapper command…]: bare_pingora with 2 threads in $pingora_mode on PORT,
# nginx's certificate, the upstream; its pid in $REPLY.
start_bare() {
  local port=$1 log=$2
  shift 2
  # shellcheck disable=SC2086 # $pingora_mode is a few words
  RUST_LOG=warn "$@" "$bare_bin" "127.0.0.1:$port" "$work/nginx-pki/leaf.pem" "$work/nginx-pki/leaf.key" \
    "127.0.0.1:$upstream_port" 2 $pingora_mode >"$log" 2>&1 &
  REPLY=$!
  pids+=("$REPLY")
}
bare_pid=""
if wants pingora; then
  start_bare "$bare_port" "$work/pingora.log"
  bare_pid=$REPLY
  wait_port "$bare_port" "$bare_pid" "bare_pingora ($pingora_mode)"
fi

# Smoke test each, and warm the edges' certificates (the first handshake issues it).
answers_ok() { # curl args…: status 0 once the answer is `ok` (50 tries), the last answer in $REPLY
  REPLY=""
  for _ in $(seq 1 50); do
    REPLY=$(curl -sS --max-time 5 "$@" 2>>"$work/curl.log") && [ "$REPLY" = "ok" ] && return 0
    sleep 0.2
  done
  return 1
}
check() { # what, curl args…
  local what=$1
  shift
  answers_ok "$@" || die "$what did not answer 'ok' (got '$REPLY'); see $results/curl.log"
}
check "the upstream" "http://127.0.0.1:$upstream_port/"
check "the upstream (h2c)" --http2-prior-knowledge "http://127.0.0.1:$upstream_h2c_port/"
check "nginx" --cacert "$work/nginx-pki/ca.pem" --resolve "$name:$nginx_port:127.0.0.1" \
  "https://$name:$nginx_port/"
check "tenant-edge" --cacert "$work/edge-data/ca/root.pem" --resolve "$name:$edge_port:127.0.0.1" \
  "https://$name:$edge_port/"
h2_targets=("nginx $nginx_port $work/nginx-pki/ca.pem" "tenant-edge $edge_port $work/edge-data/ca/root.pem")
if wants haproxy; then
  check "haproxy" --cacert "$work/nginx-pki/ca.pem" --resolve "$name:$haproxy_port:127.0.0.1" \
    "https://$name:$haproxy_port/"
  h2_targets+=("haproxy $haproxy_port $work/nginx-pki/ca.pem")
fi
if wants edge-nolog; then
  check "tenant-edge (edge-nolog)" --cacert "$work/edge-nolog-data/ca/root.pem" \
    --resolve "$name:$nolog_port:127.0.0.1" "https://$name:$nolog_port/"
  h2_targets+=("edge-nolog $nolog_port $work/edge-nolog-data/ca/root.pem")
fi
if wants pingora; then
  check "bare_pingora" --cacert "$work/nginx-pki/ca.pem" --resolve "$name:$bare_port:127.0.0.1" \
    "https://$name:$bare_port/"
  h2_targets+=("bare_pingora $bare_port $work/nginx-pki/ca.pem")
fi
for target in "${h2_targets[@]}"; do
  # shellcheck disable=SC2086 # three words
  set -- $target
  version=$(curl -sS --max-time 5 --http2 --cacert "$3" "https://$name:$2/" -o /dev/null -w '%{http_version}')
  [ "$version" = 2 ] || die "$1 does not negotiate HTTP/2 on port $2 (got HTTP/$version)"
done

{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm), $(nproc) CPUs, machine busy before the run: $(busy_percent)%"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src differs from HEAD)')"
  echo "edge: $edge_bin (built $(date -r "$edge_bin" -Is))${BENCH_EDGE_ENV:+ with $BENCH_EDGE_ENV}"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //'); wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}'); h2load: $(h2load --version | awk '{print $2}')"
  if wants haproxy; then echo "haproxy: $(haproxy -v | head -1 | awk '{print $3}')"; fi
  if wants pingora; then echo "pingora: $bare_bin 2 $pingora_mode (built $(date -r "$bare_bin" -Is))"; fi
  echo "load: ${duration}s per measurement after ${warmup}s warm-up, $rounds round(s); wrk -t$threads -c$conns; h2load -c 10 -m 10; bursts of $burst"
  echo "name: $name; ports: upstream $upstream_port (h2c $upstream_h2c_port), nginx $nginx_port, haproxy $haproxy_port, pingora $bare_port, edge $edge_port (metrics $metrics_port), edge-nolog $nolog_port (metrics $nolog_metrics_port)"
  echo "servers: $servers"
  echo "measurements: $measurements"
} >"$results/context.txt"
cat "$results/context.txt" >&2

# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------
# One row per measurement, server and round (TSV):
#   key server rate requests errors latency cpu_s note round
: >"$results/rows.tsv"
verdict=0

# The metrics port of an edge instance (nothing for the other servers).
metrics_of() {
  case "$1" in
    edge) echo "$metrics_port" ;;
    edge-nolog) echo "$nolog_metrics_port" ;;
  esac
}

# Before a measurement: note an edge's handshake counters and a busy machine.
before_run() { # server
  hs_before=""
  if [ -n "$(metrics_of "$1")" ]; then hs_before=$(edge_handshakes "$(metrics_of "$1")"); fi
  local busy
  busy=$(busy_percent)
  if [ "$busy" -gt 15 ]; then
    say "warning: the machine was ${busy}% busy just before this measurement: numbers will be noisy"
  fi
}

# The note column: for an edge, the full and resumed handshakes this measurement did.
after_run() { # server
  note="-"
  if [ -n "$(metrics_of "$1")" ] && [ -n "$hs_before" ]; then
    note=$(echo "$hs_before $(edge_handshakes "$(metrics_of "$1")")" |
      awk '{printf "handshakes: %d full, %d resumed", $3 - $1, $4 - $2}')
  fi
}

row() { # key server rate requests errors latency cpu_s
  after_run "$2"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${3:-0}" "${4:-0}" "${5:-0}" "${6:--}" "$7" "$note" \
    "$round" >>"$results/rows.tsv"
  if [ "$note" = - ]; then
    say "$1 $2: ${3:-0}/s, ${5:-0} errors"
  else
    say "$1 $2: ${3:-0}/s, ${5:-0} errors ($note)"
  fi
}

# run_wrk key server pid url [wrk args…]
run_wrk() {
  local key=$1 server=$2 pid=$3 url=$4
  shift 4
  local out="$results/$key-$server-r$round.txt"
  before_run "$server"
  timeout $((warmup + 30)) wrk -t"$threads" -c"$conns" -d"${warmup}s" "$@" "$url" >/dev/null 2>&1 || true
  local before after
  before=$(cpu_of "$pid")
  timeout $((duration + 30)) wrk -t"$threads" -c"$conns" -d"${duration}s" --latency "$@" "$url" >"$out" 2>&1 ||
    die "wrk failed for $key/$server; see $out"
  after=$(cpu_of "$pid")
  row "$key" "$server" \
    "$(awk '/^Requests\/sec:/ {print $2}' "$out")" \
    "$(awk '/requests in/ {print $1}' "$out")" \
    "$(awk '/Socket errors:/ {gsub(",", ""); e += $4 + $6 + $8 + $10} /Non-2xx/ {e += $NF} END {print e + 0}' "$out")" \
    "$(awk '$1 == "99%" {print $2 "(p99)"}' "$out")" \
    "$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')"
}

# run_h2load key server pid url [h2load args…]
run_h2load() {
  local key=$1 server=$2 pid=$3 url=$4
  shift 4
  local out="$results/$key-$server-r$round.txt"
  before_run "$server"
  timeout $((warmup + 30)) h2load -c 10 -m 10 -D "$warmup" "$@" "$url" >/dev/null 2>&1 || true
  local before after
  before=$(cpu_of "$pid")
  timeout $((duration + 30)) h2load -c 10 -m 10 -D "$duration" "$@" "$url" >"$out" 2>&1 ||
    die "h2load failed for $key/$server; see $out"
  after=$(cpu_of "$pid")
  row "$key" "$server" \
    "$(awk '/^finished in/ {print $4}' "$out")" \
    "$(awk '/^requests:/ {print $8}' "$out")" \
    "$(awk '/^requests:/ {gsub(",", ""); e += $10 + $12 + $14} /^status codes:/ {gsub(",", ""); e += $5 + $7 + $9} END {print e + 0}' "$out")" \
    "$(awk '/^time for request:/ {print $6 "(mean)"}' "$out")" \
    "$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')"
}

# run_bursts key server pid url: h2load bursts of $burst one-request connections for
# ~$duration s; the rate is connections done / time h2load spent running them.
run_bursts() {
  local key=$1 server=$2 pid=$3 url=$4
  local out="$results/$key-$server-r$round.txt"
  before_run "$server"
  timeout 60 h2load --h1 -n "$burst" -c "$burst" -t 2 "$url" >/dev/null 2>&1 || true
  local before after end
  : >"$out"
  before=$(cpu_of "$pid")
  end=$((SECONDS + duration))
  while [ "$SECONDS" -lt "$end" ]; do
    timeout 60 h2load --h1 -n "$burst" -c "$burst" -t 2 "$url" >>"$out" 2>&1 ||
      die "h2load failed for $key/$server; see $out"
  done
  after=$(cpu_of "$pid")
  # "finished in 279.17ms, …" or "finished in 1.23s, …"
  local stats
  stats=$(awk '
    /^finished in/ { t = $3; sub(",", "", t); if (t ~ /ms$/) { sub("ms", "", t); t /= 1000 } else sub("s", "", t); secs += t }
    /^requests:/ { gsub(",", ""); done += $8; err += $10 + $12 + $14 }
    /^status codes:/ { gsub(",", ""); err += $5 + $7 + $9 }
    END { printf "%.2f %d %d", (secs > 0 ? done / secs : 0), done, err }' "$out")
  # shellcheck disable=SC2086 # three words
  set -- $stats
  row "$key" "$server" "$1" "$2" "$3" "-" "$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')"
}

pid_of() {
  case "$1" in
    upstream) echo "$upstream_pid" ;;
    nginx) echo "$nginx_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    pingora) echo "$bare_pid" ;;
    edge) echo "$edge_pid" ;;
    edge-nolog) echo "$nolog_pid" ;;
  esac
}
port_of() {
  case "$1" in
    nginx) echo "$nginx_port" ;;
    haproxy) echo "$haproxy_port" ;;
    pingora) echo "$bare_port" ;;
    edge) echo "$edge_port" ;;
    edge-nolog) echo "$nolog_port" ;;
  esac
}
url_of() { # key server
  case "$2" in
    upstream) if [ "$1" = c ]; then echo "http://127.0.0.1:$upstream_h2c_port/"; else echo "http://127.0.0.1:$upstream_port/"; fi ;;
    *) echo "https://$name:$(port_of "$2")/" ;;
  esac
}

# ------------------------------------------------------------------------------------------
# i: instructions per request under callgrind
# ------------------------------------------------------------------------------------------
cg_ctl() { timeout 120 callgrind_control "$@" >>"$work/callgrind-control.log" 2>&1; }

# callgrind_phase server pid label dump h2load-args…: instrumentation on, h2load run
# ${cg_repeat:-1} times for $cg_requests requests in all, off, dump number DUMP; the
# instructions counted in $REPLY.
# --instr-atstart=no + `callgrind_control -i on` (not --collect-atstart=no: with collection
# off at start, switching instrumentation on still counts nothing).
callgrind_phase() {
  local server=$1 pid=$2 label=$3 dump="$work/callgrind.$1.$2.$4" out="$results/i-$1-$3.txt" ok
  shift 4
  REPLY=""
  cg_ctl -i on "$pid" || { say "i $server: callgrind_control -i on failed; see callgrind-control.log"; return 1; }
  ok=0
  : >"$out"
  for _ in $(seq 1 "${cg_repeat:-1}"); do
    timeout 1200 h2load "$@" >>"$out" 2>&1 || ok=$?
  done
  cg_ctl -i off "$pid" || { say "i $server: callgrind_control -i off failed"; return 1; }
  cg_ctl -d "$pid" || { say "i $server: callgrind_control -d failed"; return 1; }
  if [ "$ok" != 0 ] || [ "$(awk '/^requests:/ {n += $8} END {print n + 0}' "$out")" != "$cg_requests" ] ||
    [ "$(awk '/^status codes:/ {n += $3} END {print n + 0}' "$out")" != "$cg_requests" ]; then
    say "i $server $label: h2load did not get $cg_requests 2xx answers; see $out"
    return 1
  fi
  dump_total "$server" "$dump"
}

# dump_total server dump: the instructions counted in callgrind's DUMP (once it is written) in
# $REPLY.
dump_total() {
  local server=$1 dump=$2
  for _ in $(seq 1 100); do
    grep -q '^totals:' "$dump" 2>/dev/null && break
    sleep 0.1
  done
  [ -s "$dump" ] || { say "i $server: no callgrind dump $dump"; return 1; }
  # "totals:" (the events of this dump); older callgrind writes only "summary:".
  REPLY=$(awk '/^totals:/ {t += $2; seen = 1} /^summary:/ {s += $2} END {printf "%.0f", (seen ? t : s)}' "$dump")
}

# callgrind_resumed server pid dump url: instrumentation on, wrk -H 'Connection: close' for
# 10 s on 4 connections (wrk offers each reconnect the session of its last connection: a
# resumed handshake), off, dump number DUMP; the instructions in $REPLY, the requests (one per
# connection) in $REQUESTS.
callgrind_resumed() {
  local server=$1 pid=$2 dump="$work/callgrind.$1.$2.$3" url=$4 out="$results/i-$1-rs.txt" ok=0
  REPLY="" REQUESTS=""
  cg_ctl -i on "$pid" || { say "i $server: callgrind_control -i on failed"; return 1; }
  timeout 120 wrk -t1 -c4 -d10s -H 'Connection: close' "$url" >"$out" 2>&1 || ok=$?
  cg_ctl -i off "$pid" || { say "i $server: callgrind_control -i off failed"; return 1; }
  cg_ctl -d "$pid" || { say "i $server: callgrind_control -d failed"; return 1; }
  REQUESTS=$(awk '/requests in/ {print $1}' "$out")
  if [ "$ok" != 0 ] || [ -z "$REQUESTS" ] || [ "$REQUESTS" = 0 ] || grep -q -e 'Socket errors' -e 'Non-2xx' "$out"; then
    say "i $server resumed: wrk failed or had errors; see $out"
    return 1
  fi
  dump_total "$server" "$dump"
}

# run_callgrind server (nginx | pingora | edge | edge-nolog): a separate instance under
# callgrind, own ports (nginx: one process, `master_process off`, its own pid and logs; the
# edges: own config and data dir, the access log as by default or off), into callgrind.tsv:
# HTTP/1.1 and HTTP/2 requests on one connection, then $cg_handshakes connections of one
# request each (h2load never resumes a session: each is a full handshake).
run_callgrind() {
  local server=$1 port mport pid cafile url
  local vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$work/callgrind.$server.%p")
  free_port
  port=$REPLY
  if [ "$server" = pingora ]; then
    start_bare "$port" "$work/pingora-callgrind.log" "${vg[@]}"
    cafile=$work/nginx-pki/ca.pem
  elif [ "$server" = nginx ]; then
    # The benchmark's nginx, as one process (valgrind follows no worker), on its own port.
    fill bench/nginx-tls.conf.template "$work/nginx-callgrind.conf" -e "s|@NGINX_PORT@|$port|g" \
      -e 's|^master_process on;|master_process off;|' -e 's|^worker_processes 2;|worker_processes 1;|' \
      -e 's|nginx-tls\.|nginx-callgrind.|g'
    "${vg[@]}" nginx -p "$work/" -e "$work/nginx-callgrind.startup.log" -c "$work/nginx-callgrind.conf" \
      >"$work/nginx-callgrind.log" 2>&1 &
    REPLY=$!
    pids+=("$REPLY")
    cafile=$work/nginx-pki/ca.pem
  else
    free_port
    mport=$REPLY
    if [ "$server" = edge ]; then
      edge_config "$server-callgrind" "$port" "$mport" </dev/null
    else
      edge_config "$server-callgrind" "$port" "$mport" <<<"$nolog_yaml"
    fi
    start_edge "$server-callgrind" "${vg[@]}"
    cafile=$work/$server-callgrind-data/ca/root.pem
  fi
  pid=$REPLY
  url="https://$name:$port/"
  if ! listening "$port" "$pid" 120; then
    say "i $server: not listening on $port after 120 s under valgrind; see its log in $results; skipped"
    stop_pid "$pid" 30
    return 1
  fi
  # Warm: the certificate (the edge issues it now), the upstream connections, the code paths.
  if ! answers_ok --cacert "$cafile" --resolve "$name:$port:127.0.0.1" "$url" ||
    ! timeout 600 h2load --h1 -n 200 -c 1 "$url" >"$results/i-$server-warm.txt" 2>&1; then
    say "i $server: warm-up failed under valgrind (see curl.log, i-$server-warm.txt); skipped"
    stop_pid "$pid" 30
    return 1
  fi
  local rc=0
  if callgrind_phase "$server" "$pid" h1 1 --h1 -n "$cg_requests" -c 1 -m 1 "$url"; then
    printf '%s\th1\t%s\t%s\n' "$server" "$REPLY" "$cg_requests" >>"$results/callgrind.tsv"
    say "i $server HTTP/1.1: $((REPLY / cg_requests)) instructions per request"
    if callgrind_phase "$server" "$pid" h2 2 -n "$cg_requests" -c 1 -m 10 "$url"; then
      printf '%s\th2\t%s\t%s\n' "$server" "$REPLY" "$cg_requests" >>"$results/callgrind.tsv"
      say "i $server HTTP/2: $((REPLY / cg_requests)) instructions per request"
    fi
    # One connection per request, 10 at a time (100 at once under valgrind outlast the bare
    # proxy's 2 s upstream connect timeout); callgrind_phase checks for $cg_requests answers.
    local cg_requests=$((cg_handshakes / 10 * 10)) cg_repeat=$((cg_handshakes / 10))
    if callgrind_phase "$server" "$pid" hs 3 --h1 -n 10 -c 10 -m 1 "$url"; then
      printf '%s\ths\t%s\t%s\n' "$server" "$REPLY" "$cg_requests" >>"$results/callgrind.tsv"
      say "i $server full handshakes: $((REPLY / cg_requests)) instructions per connection"
    fi
    if callgrind_resumed "$server" "$pid" 4 "$url"; then
      printf '%s\trs\t%s\t%s\n' "$server" "$REPLY" "$REQUESTS" >>"$results/callgrind.tsv"
      say "i $server resumed handshakes: $((REPLY / REQUESTS)) instructions per connection ($REQUESTS)"
    fi
  else
    rc=1
  fi
  # Valgrind writes a last dump at exit (nothing in it: instrumentation is off by then).
  stop_pid "$pid" 60
  cp "$work/callgrind.$server.$pid"* "$results/" 2>/dev/null || true
  return "$rc"
}

# ------------------------------------------------------------------------------------------
# k: 10,000 cached certificates
# ------------------------------------------------------------------------------------------
# handshakes_for label port pid args…: BENCH_WARMUP s, then BENCH_DURATION s of
# scripts/handshakes.py; "handshakes seconds errors cpu_s" into certs.tsv as LABEL_….
handshakes_for() {
  local label=$1 port=$2 pid=$3 out="$results/k-$1.txt" before after
  shift 3
  before_run k
  timeout $((warmup + 60)) python3 scripts/handshakes.py --threads "$hs_threads" --duration "$warmup" \
    127.0.0.1 "$port" "$@" >/dev/null 2>&1 || true
  before=$(cpu_of "$pid")
  if ! timeout $((duration + 60)) python3 scripts/handshakes.py --threads "$hs_threads" --duration "$duration" \
    127.0.0.1 "$port" "$@" >"$out" 2>&1; then
    say "k: handshakes.py failed ($label); see $out"
    return 1
  fi
  after=$(cpu_of "$pid")
  # shellcheck disable=SC2046 # "handshakes N seconds S errors E"
  set -- $(awk '/^handshakes / {print $2, $4, $6}' "$out")
  [ $# = 3 ] || { say "k: no result from handshakes.py ($label); see $out"; return 1; }
  printf '%s_handshakes\t%s\n%s_seconds\t%s\n%s_errors\t%s\n%s_cpu\t%s\n' "$label" "$1" "$label" "$2" \
    "$label" "$3" "$label" "$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')" >>"$results/certs.tsv"
  say "k $label: $(awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f", (t > 0 ? n / t : 0) }') handshakes/s, $3 errors"
}

run_certs() {
  local port mport pid before after c0 c1 start
  free_port
  port=$REPLY
  free_port
  mport=$REPLY
  # The template ends inside `limits:`; the first lines below continue it.
  edge_config edge-certs "$port" "$mport" <<EOF
  # Measurement k (scripts/bench-load.sh): $cert_names names under $name, each its own
  # certificate from the internal CA, all held in the memory cache. The per-client limit on
  # never-seen names is off: every name comes from 127.0.0.1 on purpose.
  clients:
    enabled: false
access_log:
  enabled: false
tls:
  cache_capacity: $((cert_names * 2 > 20000 ? cert_names * 2 : 20000))
EOF
  start_edge edge-certs
  pid=$REPLY
  if ! listening "$port" "$pid" 30; then
    say "k: the edge did not start; see edge-certs.log; skipped"
    stop_pid "$pid"
    return 1
  fi
  # The first handshake also sets up what every later one shares: not counted per certificate.
  if ! answers_ok --cacert "$work/edge-certs-data/ca/root.pem" --resolve "$name:$port:127.0.0.1" \
    "https://$name:$port/"; then
    say "k: the edge did not answer 'ok' (got '$REPLY'); see curl.log; skipped"
    stop_pid "$pid"
    return 1
  fi
  sleep 1
  before=$(rss_of "$pid")
  c0=$(edge_metric "$mport" tenant_edge_certificates_cached)
  say "k. warming $cert_names certificates (one full handshake per name, $hs_threads threads; the internal CA issues each)"
  start=$SECONDS
  if ! timeout 7200 python3 scripts/handshakes.py --warm --count "$cert_names" --threads "$hs_threads" \
    127.0.0.1 "$port" "k{}.$name" >"$results/k-warm.txt"; then
    say "k: warming failed; see k-warm.txt and edge-certs.log; skipped"
    stop_pid "$pid"
    return 1
  fi
  # Let the background work of the last issuances (store writes) finish before reading RSS.
  sleep 2
  after=$(rss_of "$pid")
  c1=$(edge_metric "$mport" tenant_edge_certificates_cached)
  {
    printf 'names\t%s\nthreads\t%s\nrss_before\t%s\nrss_after\t%s\n' "$cert_names" "$hs_threads" "$before" "$after"
    printf 'cached_before\t%s\ncached_after\t%s\nwarm_seconds\t%s\n' "$c0" "$c1" "$((SECONDS - start))"
    printf 'warm_errors\t%s\n' "$(awk '/^handshakes / {print $6}' "$results/k-warm.txt")"
  } >"$results/certs.tsv"
  say "k: warmed in $((SECONDS - start)) s: RSS $before → $after KiB, certificates cached $c0 → $c1"
  handshakes_for rr "$port" "$pid" --count "$cert_names" "k{}.$name" || true
  handshakes_for one "$port" "$pid" "k0.$name" || true
  curl -sS --max-time 5 "http://127.0.0.1:$mport/metrics" >"$results/edge-certs-metrics.txt" 2>/dev/null || true
  stop_pid "$pid"
}

for round in $(seq 1 "$rounds"); do
  [ "$rounds" = 1 ] || say "round $round of $rounds"

  if measures a1; then
    say "a1. new connections, full handshakes (h2load --h1, bursts of $burst × 1 request)"
    for s in $servers; do run_bursts a1 "$s" "$(pid_of "$s")" "$(url_of a1 "$s")"; done
  fi

  if measures a2; then
    say "a2. new connections, resumed sessions (wrk -H 'Connection: close')"
    for s in $servers; do run_wrk a2 "$s" "$(pid_of "$s")" "$(url_of a2 "$s")" -H "Connection: close"; done
  fi

  if measures b; then
    say "b. HTTP/1.1 keep-alive (wrk)"
    for s in $servers; do run_wrk b "$s" "$(pid_of "$s")" "$(url_of b "$s")"; done
  fi

  if measures c; then
    say "c. HTTP/2 (h2load -c 10 -m 10)"
    for s in $servers; do run_h2load c "$s" "$(pid_of "$s")" "$(url_of c "$s")"; done
  fi

  # Once, on servers that never held that many connections before: a process that did keeps
  # freed memory for reuse (nginx's pools, malloc's arenas), which would hide the cost.
  # Not for edge-nolog: an idle connection writes no access log.
  if measures m && [ "$round" = 1 ]; then
    say "m. memory per idle keep-alive connection ($idle TLS connections held open)"
    for s in $servers; do
      case "$s" in upstream | edge-nolog) ;; *) run_idle "$s" "$(pid_of "$s")" "$(port_of "$s")" ;; esac
    done
  fi
done

# Once: instruction counts do not vary between rounds (and under valgrind they take long).
if measures i && [ "$callgrind_ok" = 1 ]; then
  say "i. instructions per request (callgrind, $cg_requests requests on 1 connection; valgrind is slow)"
  for s in nginx pingora edge edge-nolog; do
    if wants "$s"; then run_callgrind "$s" || say "i $s: no result"; fi
  done
fi

if measures k; then
  say "k. $cert_names cached certificates (a separate edge; scripts/handshakes.py)"
  run_certs || say "k: no result"
fi

curl -sS --max-time 5 "http://127.0.0.1:$metrics_port/metrics" >"$results/edge-metrics.txt" 2>/dev/null || true

# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------
: >"$results/summary.txt"
if [ -s "$results/rows.tsv" ]; then
  render_table "$results/rows.tsv" >"$results/summary.txt" || verdict=$?
fi
render_extra "$results" >>"$results/summary.txt" || verdict=$?

echo
cat "$results/summary.txt"
say "raw outputs: $results"
if [ "$verdict" != 0 ]; then
  say "some targets were missed (see the table)"
  # BENCH_STRICT=1: a missed target fails the run (for CI); by default it is only reported.
  if [ "${BENCH_STRICT:-0}" = 1 ]; then exit "$verdict"; fi
fi
exit 0
