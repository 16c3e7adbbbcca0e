#!/usr/bin/env bash
# `make bench-load`: whole-process load test of tenant-edge against nginx and the bare upstream,
# all in one run, all on 127.0.0.1.
#
#   upstream  nginx answering `200 ok` (HTTP/1.1 keep-alive; an h2c port for the h2 row)
#   nginx     TLS with a static ECDSA P-256 certificate, 2 workers, HTTP/2, upstream keep-alive
#   pingora   target/release/examples/bare_pingora: the smallest Pingora TLS proxy (nginx's
#             static certificate, 2 threads, the same upstream and X-Forwarded-* headers, no
#             callback, metrics or health checks): the floor Pingora itself sets, so the table
#             tells Pingora's cost per request from what tenant-edge adds
#   edge      target/release/tenant-edge (honours CARGO_TARGET_DIR), threads 2, internal CA,
#             the certificate warmed by one curl first, RUST_LOG=warn
#
# Measurements, each ~BENCH_DURATION s after a BENCH_WARMUP s warm-up of the same load:
#   a1. new connections/s, full handshakes: h2load --h1 in bursts of BENCH_BURST clients that
#       each open one connection and send one request (h2load never resumes a TLS session, so
#       every connection runs the edge's certificate callback)
#   a2. new connections/s, resumed: wrk -H "Connection: close". wrk keeps each connection's TLS
#       session, so after the first one its reconnects are resumed handshakes (tickets) that
#       skip the certificate callback; the edge's own counters (the table's note column:
#       full and resumed handshakes during that measurement) show it
#   b.  HTTP/1.1 keep-alive req/s: wrk
#   c.  HTTP/2 req/s: h2load -c 10 -m 10
#   m.  memory per idle keep-alive connection: scripts/idle-conns.py opens BENCH_IDLE TLS
#       connections (one request each, then idle) and the server's resident memory (RSS of its
#       process tree) is read before and while they are open; first round only; reported, no
#       target
# Besides the rate, each row has the server's CPU time per request (user+system of its
# process tree): on a small machine the load generator shares the cores, so CPU/request is
# the steadier comparison.
# Raw outputs, configs and logs go to bench-results/<time>/ (git-ignored); the table is printed
# and saved as summary.txt there.
#
# wrk and h2load take the TLS server name from the URL and cannot be told where to connect, so
# the name (BENCH_NAME, default bench.localhost) must resolve to 127.0.0.1. When it does not
# (glibc without nss-myhostname does not resolve *.localhost), one line is appended to
# /etc/hosts if it is writable; that is the only thing here that may need root.
#
# Knobs: BENCH_DURATION (10), BENCH_WARMUP (2), BENCH_CONNECTIONS (50, wrk), BENCH_THREADS
# (2, wrk), BENCH_BURST (500, a1), BENCH_NAME (bench.localhost), BENCH_STRICT (0; 1: exit 3
# when a target is missed), BENCH_ROUNDS (1; N: run every measurement N times, the table keeps
# each server's best round: on a shared machine noise only ever makes numbers worse),
# BENCH_EDGE_ENV (extra VAR=value for the edge), BENCH_SERVERS ("upstream nginx pingora edge":
# the servers measured, in that order; nginx and edge are needed for the ratios), BENCH_ONLY
# ("a1 a2 b c m": the measurements run), BENCH_IDLE (2000, m),
# CARGO_TARGET_DIR (target).
# Needs: wrk, h2load, nginx, openssl, curl (apt-get install -y wrk nghttp2-client nginx).
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
servers=${BENCH_SERVERS:-upstream nginx pingora edge}
measurements=${BENCH_ONLY:-a1 a2 b c m}
idle=${BENCH_IDLE:-2000}
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
    function target(k) { return k ~ /^a/ ? 0.9 : 1.0 }
    # Each server keeps its best round (highest rate) per measurement.
    !(($1, $2) in rate) || $3 + 0 > rate[$1, $2] + 0 {
      rate[$1, $2] = $3; reqs[$1, $2] = $4; errs[$1, $2] = $5; lat[$1, $2] = $6; cpu[$1, $2] = $7
      note[$1, $2] = $8
    }
    $9 + 0 > nrounds { nrounds = $9 + 0 }
    END {
      n = split("a1 a2 b c", keys, " "); ns = split("upstream nginx pingora edge", servers, " ")
      printf "%-46s %-9s %10s %9s %6s %15s %10s  %s\n", "measurement", "server", "rate/s", "requests", "errors", "latency", "CPU us/req", "note"
      for (i = 1; i <= n; i++) {
        k = keys[i]
        if (!((k, "nginx") in rate) && !((k, "edge") in rate)) continue
        first = 1
        for (j = 1; j <= ns; j++) {
          s = servers[j]
          if (!((k, s) in rate)) continue
          per = reqs[k, s] > 0 ? sprintf("%.1f", cpu[k, s] * 1e6 / reqs[k, s]) : "-"
          printf "%-46s %-9s %10.0f %9d %6d %15s %10s  %s\n", (first ? title(k) : ""), s, rate[k, s], reqs[k, s], errs[k, s], lat[k, s], per, (note[k, s] == "-" ? "" : note[k, s])
          first = 0
        }
      }
      print ""
      printf "%-46s %10s %11s %12s %11s %7s  %s\n", "ratio", "edge/nginx", "edge/upstr.", "edge/pingora", "CPU e/n", "target", "verdict (on edge/nginx rate)"
      fails = 0
      for (i = 1; i <= n; i++) {
        k = keys[i]
        if (!((k, "nginx") in rate) && !((k, "edge") in rate)) continue
        r = rate[k, "nginx"] > 0 ? rate[k, "edge"] / rate[k, "nginx"] : 0
        u = rate[k, "upstream"] > 0 ? sprintf("%.2f", rate[k, "edge"] / rate[k, "upstream"]) : "-"
        p = rate[k, "pingora"] > 0 ? sprintf("%.2f", rate[k, "edge"] / rate[k, "pingora"]) : "-"
        ce = reqs[k, "edge"] > 0 ? cpu[k, "edge"] / reqs[k, "edge"] : 0
        cn = reqs[k, "nginx"] > 0 ? cpu[k, "nginx"] / reqs[k, "nginx"] : 0
        c = cn > 0 ? sprintf("%.2fx", ce / cn) : "-"
        ok = r >= target(k) && errs[k, "edge"] == 0
        if (!ok) fails++
        printf "%-46s %10.2f %11s %12s %11s %7s  %s\n", title(k), r, u, p, c, ">=" target(k), (ok ? "PASS" : "FAIL" (errs[k, "edge"] ? " (edge errors)" : ""))
      }
      print ""
      print "CPU us/req: user+system CPU of that server process tree (nginx: master + workers) per request"
      print "(a1, a2: per connection). CPU e/n: edge CPU per request / nginx CPU per request."
      print "The load generators share the cores with the servers, so a rate ratio mixes the cost of the"
      print "server with that of the client; the CPU ratio compares the servers alone."
      print "Upstream rows are plain HTTP (a1, a2: new TCP connections; c: h2c), a ceiling, not a target."
      print "Pingora rows: examples/bare_pingora.rs, the smallest Pingora proxy for the same job (static"
      print "certificate, no callback, metrics or health checks): the floor under tenant-edge."
      if (nrounds > 1) print "Best of " nrounds " rounds per server and measurement; every round is in rows.tsv."
      exit (fails > 0 ? 3 : 0)
  }' "$1"
}

# `scripts/bench-load.sh --table bench-results/TIME`: print that run's table again.
if [ "${1:-}" = --table ]; then
  [ -f "${2:-}/rows.tsv" ] || die "usage: $0 --table bench-results/TIME"
  render_table "$2/rows.tsv" || true
  exit 0
fi

# ------------------------------------------------------------------------------------------
# Prerequisites
# ------------------------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
missing=()
for tool in wrk h2load nginx openssl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "missing ${missing[*]}; install with: apt-get install -y wrk nghttp2-client nginx openssl curl"
fi
[ -x "$edge_bin" ] || die "$edge_bin not found; build it first: cargo build --release --bins (or make bench-load)"
if wants pingora && [ ! -x "$bare_bin" ]; then
  die "$bare_bin not found; build it first: cargo build --release --example bare_pingora (or make bench-load)"
fi
for s in $servers; do
  case "$s" in upstream | nginx | pingora | edge) ;; *) die "BENCH_SERVERS: unknown server '$s' (upstream nginx pingora edge)" ;; esac
done

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
    # SIGINT: a fast shutdown for both Pingora and nginx.
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
  cp "$work"/*.conf "$work"/*.yaml "$work"/*.log "$results"/ 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_port
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

fill() { # template output
  sed -e "s|@DIR@|$work|g" \
    -e "s|@NAME@|$name|g" \
    -e "s|@USER_LINE@|$user_line|g" \
    -e "s|@UPSTREAM_PORT@|$upstream_port|g" \
    -e "s|@UPSTREAM_H2C_PORT@|$upstream_h2c_port|g" \
    -e "s|@NGINX_PORT@|$nginx_port|g" \
    -e "s|@EDGE_PORT@|$edge_port|g" \
    -e "s|@METRICS_PORT@|$metrics_port|g" \
    "$1" >"$2"
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

# run_idle server pid port: memory per idle keep-alive TLS connection (bytes), into idle.tsv.
run_idle() {
  local server=$1 pid=$2 port=$3 before after fifo="$work/idle.fifo" out
  out="$results/m-$1-r$round.txt"
  before=$(rss_of "$pid")
  rm -f "$fifo"
  mkfifo "$fifo"
  python3 scripts/idle-conns.py 127.0.0.1 "$port" "$name" "$idle" <"$fifo" >"$out" 2>&1 &
  local client=$!
  exec 7>"$fifo"
  for _ in $(seq 1 1200); do
    grep -q '^ready' "$out" && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q '^ready' "$out"; then
    exec 7>&-
    die "idle-conns.py did not open $idle connections to $server; see $out"
  fi
  sleep 1
  after=$(rss_of "$pid")
  exec 7>&- # closing its stdin makes it close the connections and exit
  wait "$client" 2>/dev/null || true
  printf '%s\t%s\t%s\t%s\n' "$server" "$before" "$after" "$round" >>"$results/idle.tsv"
  say "m $server: $(((after - before) * 1024 / idle)) bytes per idle connection ($before → $after KiB)"
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

# The edge's completed handshakes so far, "full resumed" (from its /metrics).
edge_handshakes() {
  curl -sS --max-time 5 "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null |
    awk '/^tenant_edge_tls_handshakes_completed_total/ {
           if ($0 ~ /resumed="true"/) r = $NF; else f = $NF
         } END { printf "%d %d", f, r }'
}

# ------------------------------------------------------------------------------------------
# Start: upstream, nginx (TLS), tenant-edge
# ------------------------------------------------------------------------------------------
free_port
upstream_port=$REPLY
free_port
upstream_h2c_port=$REPLY
free_port
nginx_port=$REPLY
free_port
edge_port=$REPLY
free_port
metrics_port=$REPLY
free_port
bare_port=$REPLY
# As root, nginx workers would switch to `nobody`, who cannot read the private work dir.
user_line=""
if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi

# The nginx certificate: a throwaway CA and an ECDSA P-256 leaf for $name (only the leaf is
# sent, as tenant-edge does with its internal CA).
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
) || die "openssl could not generate the nginx certificate"

fill bench/nginx-upstream.conf.template "$work/nginx-upstream.conf"
fill bench/nginx-tls.conf.template "$work/nginx-tls.conf"
fill bench/edge.yaml.template "$work/edge.yaml"

nginx -p "$work/" -e "$work/nginx-upstream.startup.log" -c "$work/nginx-upstream.conf" &
upstream_pid=$!
pids+=("$upstream_pid")
wait_port "$upstream_port" "$upstream_pid" "the upstream nginx"

nginx -p "$work/" -e "$work/nginx-tls.startup.log" -c "$work/nginx-tls.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
wait_port "$nginx_port" "$nginx_pid" "nginx (TLS)"

# BENCH_EDGE_ENV: extra environment for the edge only, to try a change without rebuilding
# (e.g. "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2" for another allocator).
# shellcheck disable=SC2086 # word splitting of BENCH_EDGE_ENV is the point
env RUST_LOG=warn ${BENCH_EDGE_ENV:-} "$edge_bin" run -c "$work/edge.yaml" >"$work/edge.log" 2>&1 &
edge_pid=$!
pids+=("$edge_pid")
wait_port "$edge_port" "$edge_pid" "tenant-edge"

bare_pid=""
if wants pingora; then
  RUST_LOG=warn "$bare_bin" "127.0.0.1:$bare_port" "$work/nginx-pki/leaf.pem" "$work/nginx-pki/leaf.key" \
    "127.0.0.1:$upstream_port" 2 >"$work/pingora.log" 2>&1 &
  bare_pid=$!
  pids+=("$bare_pid")
  wait_port "$bare_port" "$bare_pid" "bare_pingora"
fi

# Smoke test each, and warm the edge's certificate (the first handshake issues it).
check() { # what, curl args…
  local what=$1 body=""
  shift
  for _ in $(seq 1 50); do
    body=$(curl -sS --max-time 5 "$@" 2>>"$work/curl.log") && [ "$body" = "ok" ] && return 0
    sleep 0.2
  done
  die "$what did not answer 'ok' (got '$body'); see $results/curl.log"
}
check "the upstream" "http://127.0.0.1:$upstream_port/"
check "the upstream (h2c)" --http2-prior-knowledge "http://127.0.0.1:$upstream_h2c_port/"
check "nginx" --cacert "$work/nginx-pki/ca.pem" --resolve "$name:$nginx_port:127.0.0.1" \
  "https://$name:$nginx_port/"
check "tenant-edge" --cacert "$work/edge-data/ca/root.pem" --resolve "$name:$edge_port:127.0.0.1" \
  "https://$name:$edge_port/"
h2_targets=("nginx $nginx_port $work/nginx-pki/ca.pem" "tenant-edge $edge_port $work/edge-data/ca/root.pem")
if wants pingora; then
  check "bare_pingora" --cacert "$work/nginx-pki/ca.pem" --resolve "$name:$bare_port:127.0.0.1" \
    "https://$name:$bare_port/"
  h2_targets+=("bare_pingora $bare_port $work/nginx-pki/ca.pem")
fi
for target in "${h2_targets[@]}"; do
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
  echo "load: ${duration}s per measurement after ${warmup}s warm-up, $rounds round(s); wrk -t$threads -c$conns; h2load -c 10 -m 10; bursts of $burst"
  echo "name: $name; ports: upstream $upstream_port (h2c $upstream_h2c_port), nginx $nginx_port, pingora $bare_port, edge $edge_port"
  echo "servers: $servers"
} >"$results/context.txt"
cat "$results/context.txt" >&2

# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------
# One row per measurement, server and round (TSV):
#   key server rate requests errors latency cpu_s note round
: >"$results/rows.tsv"
verdict=0

# Before a measurement: note the edge's handshake counters and a busy machine.
before_run() { # server
  hs_before=""
  if [ "$1" = edge ]; then hs_before=$(edge_handshakes); fi
  local busy
  busy=$(busy_percent)
  if [ "$busy" -gt 15 ]; then
    say "warning: the machine was ${busy}% busy just before this measurement: numbers will be noisy"
  fi
}

# The note column: for the edge, the full and resumed handshakes this measurement did.
after_run() { # server
  note="-"
  if [ "$1" = edge ] && [ -n "$hs_before" ]; then
    note=$(echo "$hs_before $(edge_handshakes)" | awk '{printf "handshakes: %d full, %d resumed", $3 - $1, $4 - $2}')
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
  set -- $stats
  row "$key" "$server" "$1" "$2" "$3" "-" "$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')"
}

pid_of() {
  case "$1" in
    upstream) echo "$upstream_pid" ;;
    nginx) echo "$nginx_pid" ;;
    pingora) echo "$bare_pid" ;;
    edge) echo "$edge_pid" ;;
  esac
}
port_of() {
  case "$1" in
    nginx) echo "$nginx_port" ;;
    pingora) echo "$bare_port" ;;
    edge) echo "$edge_port" ;;
  esac
}
url_of() { # key server
  case "$2" in
    upstream) if [ "$1" = c ]; then echo "http://127.0.0.1:$upstream_h2c_port/"; else echo "http://127.0.0.1:$upstream_port/"; fi ;;
    nginx) echo "https://$name:$nginx_port/" ;;
    pingora) echo "https://$name:$bare_port/" ;;
    edge) echo "https://$name:$edge_port/" ;;
  esac
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
  if measures m && [ "$round" = 1 ]; then
    say "m. memory per idle keep-alive connection ($idle TLS connections held open)"
    for s in $servers; do
      [ "$s" = upstream ] || run_idle "$s" "$(pid_of "$s")" "$(port_of "$s")"
    done
  fi
done

curl -sS --max-time 5 "http://127.0.0.1:$metrics_port/metrics" >"$results/edge-metrics.txt" 2>/dev/null || true

# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------
: >"$results/summary.txt"
if [ -s "$results/rows.tsv" ]; then
  render_table "$results/rows.tsv" >"$results/summary.txt" || verdict=$?
fi
if [ -s "$results/idle.tsv" ]; then
  awk -F '\t' -v n="$idle" '
    { best[$1] = ($3 - $2) * 1024 / n }
    END {
      print ""
      printf "%-46s %-9s %10s\n", "m.  memory per idle keep-alive TLS connection", "", "bytes"
      split("nginx pingora edge", order, " ")
      for (i = 1; i <= 3; i++) if (order[i] in best) printf "%-46s %-9s %10.0f\n", "", order[i], best[order[i]]
      if (("nginx" in best) && ("edge" in best) && best["nginx"] > 0)
        printf "%-46s %-9s %10.2f  (reported; the issue sets no target)\n", "", "edge/nginx", best["edge"] / best["nginx"]
    }' "$results/idle.tsv" >>"$results/summary.txt"
fi

echo
cat "$results/summary.txt"
say "raw outputs: $results"
if [ "$verdict" != 0 ]; then
  say "some targets were missed (see the table)"
  # BENCH_STRICT=1: a missed target fails the run (for CI); by default it is only reported.
  if [ "${BENCH_STRICT:-0}" = 1 ]; then exit "$verdict"; fi
fi
exit 0
