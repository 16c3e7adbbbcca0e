#!/usr/bin/env bash
# `make bench-issuance`: on-demand issuance speed of tenant-edge against Caddy (Debian's package,
# on-demand TLS + ask endpoint), side by side in one run, all on 127.0.0.1.
#
#   Pebble    one Pebble + pebble-challtestsrv (its DNS: 127.0.0.1 for every name) per contender,
#             since Pebble validates on one httpPort/tlsPort; PEBBLE_VA_NOSLEEP=1,
#             PEBBLE_WFE_NONCEREJECT=0, PEBBLE_AUTHZREUSE=0 (as in tests/it/common/pebble.rs)
#   edge      target/release/tenant-edge (honours CARGO_TARGET_DIR), threads 2, allow-list in a
#             throwaway PostgreSQL database te_bench_<random> (the Rails-like `companies` table),
#             ACME against its Pebble; RUST_LOG=info
#   Caddy     on_demand_tls { ask } with bench/issuance/ask.py, acme_ca = its Pebble, nothing
#             else configured ("as it comes")
#   upstream  target/release/demo-upstream, the same for both
#
# Measurements, each on names never seen before (fresh random names under .bench.test), for
# each contender:
#   w. one warm-up name (the ACME account is created here; not counted)
#   a. ClientHello → first response byte, N_SEQ names one after the other (curl:
#      time_starttransfer - time_connect); median, min, max
#   h. the same names again on new connections (certificate and decision cached): the warm path;
#      the edge must not query the database (tenant_edge_database_queries_total unchanged)
#   b. N_PAR names started at the same moment: how many get HTTP 200, and the failures' errors
#   c. N names, at most BENCH_CONCURRENCY in flight: certificates per second (200s / wall time)
# The edge runs a, h, b, c with its issuance limits raised (limits.issuance: interval off,
# burst 1000, max_concurrent 64, budget_per_week off; limits.clients.new_names_burst 100000),
# so they measure speed, not policy. Row b0 first runs b against a fresh edge with the shipped
# default limits, to show what an operator gets out of the box.
#
# The edge's pre-provisioning is off (bench/issuance/edge.yaml.template): every bench name is in
# the companies table before the edge starts, and it would otherwise issue them in the background.
# Debian's Pebble 2.4 sometimes deadlocks under the edge's concurrent orders (see pebble_stuck);
# such a phase is detected, reported and run again on a restarted Pebble and a fresh edge.
#
# Raw outputs (one TSV line per request, Pebble/Caddy/edge logs, metrics, configs) go to
# bench-results/issuance-<time>/ (git-ignored); the table is printed and saved as summary.txt.
#
# Knobs: BENCH_SEQ (10), BENCH_PAR (10), BENCH_EDGE_N (100), BENCH_CADDY_N (40),
# BENCH_CONCURRENCY (16), BENCH_COOLDOWN (10 s between phases, so that neither contender's
# rate limiter carries over from one phase to the next), BENCH_EDGE_CHALLENGES
# ("tls-alpn-01, http-01", the production default), BENCH_NO_BUILD=1 (use the existing binaries),
# DATABASE_URL (admin URL; default postgres://postgres@127.0.0.1:5432/postgres),
# CARGO_TARGET_DIR (target), BENCH_STRICT=1 (exit non-zero when the edge misses a target),
# BENCH_ONLY (edge or caddy: measure one contender only; both by default).
# Needs: caddy (installed with apt-get when missing), pebble, curl, openssl, psql, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

n_seq=${BENCH_SEQ:-10}
n_par=${BENCH_PAR:-10}
n_edge=${BENCH_EDGE_N:-100}
n_caddy=${BENCH_CADDY_N:-40}
conc=${BENCH_CONCURRENCY:-16}
cooldown=${BENCH_COOLDOWN:-10}
edge_challenges=${BENCH_EDGE_CHALLENGES:-tls-alpn-01, http-01}
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
edge_bin=$target_dir/release/tenant-edge
upstream_bin=$target_dir/release/demo-upstream
here=$repo/bench/issuance

die() {
  echo "bench-issuance: $*" >&2
  exit 1
}
say() { echo "bench-issuance: $*" >&2; }

# ------------------------------------------------------------------------------------------
# Prerequisites and build
# ------------------------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
if ! command -v caddy >/dev/null 2>&1; then
  say "caddy is missing: apt-get install -y caddy"
  [ "$(id -u)" = 0 ] || die "not root; install it with: sudo apt-get install -y caddy"
  apt-get install -y caddy >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y caddy >/dev/null 2>&1; } ||
    die "apt-get install -y caddy failed"
fi
missing=()
for tool in caddy pebble pebble-challtestsrv curl openssl psql python3 xargs; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] ||
  die "missing ${missing[*]}; install with: apt-get install -y caddy pebble curl openssl postgresql-client python3"
psql "$admin_url" -Atqc 'SELECT 1' >/dev/null 2>&1 ||
  die "PostgreSQL is not reachable at $admin_url (set DATABASE_URL)"

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  # One release build at a time in a shared target directory.
  for _ in $(seq 1 120); do
    pgrep -f "cargo build --release" >/dev/null 2>&1 || break
    say "another release build is running; waiting"
    sleep 10
  done
  say "cargo build --release --bins (CARGO_TARGET_DIR=$target_dir)"
  CARGO_TARGET_DIR=$target_dir cargo build --release --bins -q || die "build failed"
fi
[ -x "$edge_bin" ] && [ -x "$upstream_bin" ] || die "$edge_bin or $upstream_bin not found"

# ------------------------------------------------------------------------------------------
# Work directory, results, cleanup
# ------------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/tenant-edge-bench-issuance.XXXXXX")
results=$repo/bench-results/issuance-$(date +%Y%m%d-%H%M%S)
mkdir -p "$results" "$work/pki" "$work/caddy-data" "$work/xdg"
run_id=$(openssl rand -hex 3)
db=te_bench_$run_id
db_url=$(printf '%s' "$admin_url" | sed -E "s#^([a-z]+://[^/?]*)(/[^?]*)?#\\1/$db#")
db_created=0

pids=()
edge_pid=""
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do
    # tenant-edge: SIGINT is Pingora's fast shutdown; the others stop on SIGTERM.
    if [ "$pid" = "$edge_pid" ]; then kill -INT "$pid"; else kill -TERM "$pid"; fi 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$db_created" = 1 ]; then
    psql "$admin_url" -Atqc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
      say "could not drop database $db; drop it by hand"
  fi
  # Logs and generated configs are worth keeping next to the numbers.
  cp "$work"/*.log "$work"/*.yaml "$work"/*.json "$work"/Caddyfile "$results"/ 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_port
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

fill() { # template output [extra sed expressions…]
  local tpl=$1 out=$2
  shift 2
  sed -e "s|@DIR@|$work|g" \
    -e "s|@UPSTREAM_PORT@|$upstream_port|g" \
    -e "s|@ASK_PORT@|$ask_port|g" \
    -e "s|@CADDY_HTTP_PORT@|$caddy_http|g" \
    -e "s|@CADDY_HTTPS_PORT@|$caddy_https|g" \
    -e "s|@EDGE_HTTP_PORT@|$edge_http|g" \
    -e "s|@EDGE_HTTPS_PORT@|$edge_https|g" \
    -e "s|@EDGE_METRICS_PORT@|$edge_metrics|g" \
    -e "s|@DATABASE_URL@|$db_url|g" \
    -e "s|@CHALLENGES@|$edge_challenges|g" \
    "$@" "$tpl" >"$out"
}

now() { date +%s.%N; }
fact() { printf '%s\t%s\n' "$1" "$2" >>"$results/facts.tsv"; }

# ------------------------------------------------------------------------------------------
# Ports, names, PKI, database
# ------------------------------------------------------------------------------------------
for v in upstream_port ask_port caddy_http caddy_https edge_http edge_https edge_metrics \
  pe_port pe_mgmt pe_dns pe_dns_mgmt pc_port pc_mgmt pc_dns pc_dns_mgmt; do
  free_port
  printf -v "$v" '%s' "$REPLY"
done

# Fresh names per run: <contender>-<phase>-<i>-<run id>.bench.test (e = edge, c = Caddy).
names() { # contender phase count → one name a line
  local i
  for i in $(seq 1 "$3"); do printf '%s-%s-%s-%s.bench.test\n' "$1" "$2" "$i" "$run_id"; done
}
for p in b0:$n_par w:1 a:$n_seq b:$n_par c:$n_edge; do names e "${p%%:*}" "${p#*:}"; done >"$work/edge-names.txt"
for p in w:1 a:$n_seq b:$n_par c:$n_caddy; do names c "${p%%:*}" "${p#*:}"; done >"$work/caddy-names.txt"

# Pebble's listener certificate (its directory's HTTPS), trusted by both ACME clients.
(
  cd "$work/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout listener-ca.key \
    -out listener-ca.pem -days 2 -subj "/CN=pebble listener bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout listener.key \
    -out listener.csr -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >listener.ext
  openssl x509 -req -in listener.csr -CA listener-ca.pem -CAkey listener-ca.key \
    -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 -extfile listener.ext \
    -out listener.pem 2>/dev/null
) || die "openssl could not generate Pebble's listener certificate"

# The allow-list: the Rails-like schema of ARCHITECTURE.md, one active company per edge name.
psql "$admin_url" -Atqc "CREATE DATABASE $db" >/dev/null || die "cannot create database $db"
db_created=1
{
  echo "CREATE EXTENSION IF NOT EXISTS citext;"
  echo "CREATE TABLE companies (id bigserial PRIMARY KEY, name text, dns_names citext[] NOT NULL DEFAULT '{}', active boolean NOT NULL DEFAULT true);"
  echo "CREATE INDEX companies_dns_names ON companies USING gin (dns_names);"
  echo "INSERT INTO companies (name, dns_names) VALUES"
  awk '{ printf "%s(%s, %s)", (NR > 1 ? ",\n" : ""), "'"'"'Bench " NR "'"'"'", "'"'"'{" $0 "}'"'"'" } END { print ";" }' "$work/edge-names.txt"
  echo "ANALYZE companies;"
} >"$work/schema.sql"
psql "$db_url" -v ON_ERROR_STOP=1 -Atq -f "$work/schema.sql" >/dev/null || die "cannot create the companies table in $db"

# ------------------------------------------------------------------------------------------
# Start: upstream, ask endpoint, two Pebbles, Caddy
# ------------------------------------------------------------------------------------------
"$upstream_bin" --listen "127.0.0.1:$upstream_port" --name bench >/dev/null 2>"$work/upstream.log" &
pids+=($!)
wait_port "$upstream_port" $! "demo-upstream"

python3 "$here/ask.py" "$ask_port" "$work/caddy-names.txt" 2>"$work/ask.log" &
pids+=($!)
wait_port "$ask_port" $! "the ask endpoint"

start_challtestsrv() { # label dns dns_mgmt
  pebble-challtestsrv -dns01 "127.0.0.1:$2" -http01 "" -https01 "" -tlsalpn01 "" \
    -management "127.0.0.1:$3" -defaultIPv6 "" >"$work/challtestsrv-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$3" $! "pebble-challtestsrv ($1)"
}
# Pebble validating on http_port/tls_port; its pid in pebble_pid_<label>. Pebble keeps its
# state in memory, so a restart means a new root, no accounts and no orders.
start_pebble() { # label port mgmt dns http_port tls_port
  local label=$1 port=$2 mgmt=$3 dns=$4
  fill "$here/pebble.json.template" "$work/pebble-$label.json" \
    -e "s|@PEBBLE_PORT@|$port|g" -e "s|@PEBBLE_MGMT_PORT@|$mgmt|g" \
    -e "s|@HTTP_PORT@|$5|g" -e "s|@TLS_PORT@|$6|g"
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
    pebble -config "$work/pebble-$label.json" -dnsserver "127.0.0.1:$dns" >>"$work/pebble-$label.log" 2>&1 &
  pids+=($!)
  printf -v "pebble_pid_$label" '%s' "$!"
  wait_port "$port" $! "pebble ($label)"
  wait_port "$mgmt" $! "pebble ($label) management"
  # The root that this Pebble's certificates chain to (new at every Pebble start).
  curl -sS --max-time 5 --cacert "$work/pki/listener-ca.pem" "https://127.0.0.1:$mgmt/roots/0" \
    >"$work/root-$label.pem" || die "cannot fetch Pebble's root ($label)"
  grep -q "BEGIN CERTIFICATE" "$work/root-$label.pem" || die "Pebble ($label) served no root"
}
start_challtestsrv edge "$pe_dns" "$pe_dns_mgmt"
start_challtestsrv caddy "$pc_dns" "$pc_dns_mgmt"
start_pebble edge "$pe_port" "$pe_mgmt" "$pe_dns" "$edge_http" "$edge_https"
start_pebble caddy "$pc_port" "$pc_mgmt" "$pc_dns" "$caddy_http" "$caddy_https"

fill "$here/Caddyfile.template" "$work/Caddyfile" -e "s|@PEBBLE_PORT@|$pc_port|g"
HOME=$work/xdg XDG_DATA_HOME=$work/xdg XDG_CONFIG_HOME=$work/xdg \
  caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
caddy_pid=$!
pids+=("$caddy_pid")
wait_port "$caddy_https" "$caddy_pid" "caddy"

start_edge() { # variant (default… | raised…): its own config, log and data directory
  fill "$here/edge.yaml.template" "$work/edge-$1.yaml" \
    -e "s|@PEBBLE_PORT@|$pe_port|g" -e "s|@VARIANT@|$1|g"
  if [[ "$1" == raised* ]]; then
    cat >>"$work/edge-$1.yaml" <<'EOF'

# Raised for the speed measurements (a, h, b, c): no rate limit, no weekly budget, no
# per-client gate on never-seen names; these measure issuance speed, not policy.
limits:
  issuance:
    interval: off
    burst: 1000
    max_concurrent: 64
    budget_per_week: off
  clients:
    new_names_burst: 100000
EOF
  fi
  "$edge_bin" check --syntax-only -c "$work/edge-$1.yaml" >"$work/edge-$1-check.log" 2>&1 ||
    die "tenant-edge check rejects $work/edge-$1.yaml: $(cat "$work/edge-$1-check.log")"
  RUST_LOG=${BENCH_RUST_LOG:-info} "$edge_bin" run -c "$work/edge-$1.yaml" >"$work/edge-$1.log" 2>&1 &
  edge_pid=$!
  pids+=("$edge_pid")
  wait_port "$edge_https" "$edge_pid" "tenant-edge ($1)"
  wait_port "$edge_metrics" "$edge_pid" "tenant-edge ($1) metrics"
}
stop_edge() {
  kill -INT "$edge_pid" 2>/dev/null
  for _ in $(seq 1 100); do
    kill -0 "$edge_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$edge_pid" 2>/dev/null || true
  wait "$edge_pid" 2>/dev/null || true
}

{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm), $(nproc) CPUs; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- src 2>/dev/null || echo ' (src modified)')"
  echo "edge binary: $edge_bin, built $(date -r "$edge_bin" -Is)$([ "${BENCH_NO_BUILD:-0}" = 1 ] && echo ' (BENCH_NO_BUILD=1: may predate the tree)')"
  echo "edge challenges: $edge_challenges; caddy: $(caddy version 2>/dev/null | awk '{print $1}'); pebble: $(dpkg-query -W -f '${Version}' pebble 2>/dev/null || echo '?'); curl: $(curl --version | head -1 | awk '{print $2}')"
  echo "names: *-$run_id.bench.test; database: $db"
  echo "ports: edge https $edge_https http $edge_http metrics $edge_metrics, pebble $pe_port; caddy https $caddy_https http $caddy_http, pebble $pc_port, ask $ask_port; upstream $upstream_port"
  echo "phases: a $n_seq sequential, b $n_par at once, c edge $n_edge / caddy $n_caddy with $conc in flight; ${cooldown}s cool-down between phases"
} >"$results/context.txt"
cat "$results/context.txt" >&2

# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------
: >"$results/facts.tsv"

scrape() { curl -sS --max-time 5 "http://127.0.0.1:$edge_metrics/metrics" 2>/dev/null || true; }
# Sum of a metric family's samples whose labels match a regex (default: all).
msum() { # file name [label-regex]
  awk -v n="$2" -v re="${3:-.}" '
    $1 ~ "^" n "({|$)" && $1 ~ re { s += $NF } END { printf "%g", s + 0 }' "$1"
}
pebble_count() { grep -c "$2" "$work/pebble-$1.log" 2>/dev/null || true; }
ask_count() { grep -c ' ask ' "$work/ask.log" 2>/dev/null || true; }

# run_phase contender(edge|caddy) phase mode(seq|par|pool) names-file
# Writes $results/<contender>-<phase>.tsv and facts: wall time, Pebble orders/polls, asks, and
# the edge's metric deltas.
run_phase() {
  local who=$1 phase=$2 mode=$3 list=$4 port ca label
  case "$who" in
    edge) port=$edge_https ca=$work/root-edge.pem label=edge ;;
    caddy) port=$caddy_https ca=$work/root-caddy.pem label=caddy ;;
  esac
  local out=$results/$who-$phase.tsv before_m=$work/m-before.txt after_m=$results/edge-metrics-after-$phase-$who.txt
  local o0 p0 k0 t0 t1
  [ "$who" = edge ] && scrape >"$before_m"
  o0=$(pebble_count "$label" "POST /order-plz")
  p0=$(pebble_count "$label" " POST /")
  k0=$(ask_count)
  t0=$(now)
  export FETCH_PORT=$port FETCH_CA=$ca FETCH_TIMEOUT=30
  case "$mode" in
    seq) while read -r n; do "$here/fetch.sh" "$n"; done <"$list" >"$out" ;;
    par)
      # All at once: one curl per name, each writing its own line, then wait for all of them.
      local n j fetches=()
      while read -r n; do
        "$here/fetch.sh" "$n" >"$work/par-$n.tsv" &
        fetches+=($!)
      done <"$list"
      for j in "${fetches[@]}"; do wait "$j" || true; done
      while read -r n; do cat "$work/par-$n.tsv"; done <"$list" >"$out"
      ;;
    pool) xargs -P "$conc" -n 1 "$here/fetch.sh" <"$list" >"$out" ;;
  esac
  t1=$(now)
  fact "$who.$phase.wall" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  fact "$who.$phase.orders" "$(($(pebble_count "$label" "POST /order-plz") - o0))"
  fact "$who.$phase.acme_posts" "$(($(pebble_count "$label" " POST /") - p0))"
  [ "$who" = caddy ] && fact "caddy.$phase.asks" "$(($(ask_count) - k0))"
  if [ "$who" = edge ]; then
    scrape >"$after_m"
    local f
    for f in "database_queries:tenant_edge_database_queries_total" \
      "acme_orders_valid:tenant_edge_acme_orders_total:outcome=\"valid\"" \
      "acme_order_seconds:tenant_edge_acme_order_duration_seconds_sum" \
      "acme_order_count:tenant_edge_acme_order_duration_seconds_count" \
      "limited:tenant_edge_issuances_limited_total"; do
      local key=${f%%:*} rest=${f#*:} metric re
      metric=${rest%%:*}
      re=.
      [ "$rest" != "$metric" ] && re=${rest#*:}
      fact "edge.$phase.$key" "$(awk -v a="$(msum "$before_m" "$metric" "$re")" -v b="$(msum "$after_m" "$metric" "$re")" 'BEGIN { printf "%g", b - a }')"
    done
  fi
  local ok total
  ok=$(awk -F '\t' '$2 == 200' "$out" | wc -l)
  total=$(wc -l <"$out")
  say "$who $phase: $ok/$total HTTP 200 in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
}
pick() { grep -E "^$1-$2-[0-9]+-" "$work/$3-names.txt" >"$work/list-$3-$2.txt" || true; echo "$work/list-$3-$2.txt"; }
pause() { [ "$cooldown" -gt 0 ] && sleep "$cooldown" || true; }

# Pebble 2.4 (Debian's) can deadlock when several orders are in flight: every request then waits
# forever on its in-memory store's lock. Seen here in about one run in five, always with the
# edge's 10+ concurrent orders (Caddy never has two orders in flight): a goroutine dump showed
# FindValidAuthorization holding the store's read lock while waiting for an authorization's
# lock, AddOrder/AddCertificate queued as writers, and every other handler queued behind them.
# That is a broken CA, not a slow edge, so it is detected and the phase is run again.
# /cert-status-by-serial reads the store: no answer within 3 s means Pebble is stuck.
pebble_stuck() { # mgmt-port
  local code
  code=$(curl -s -o /dev/null --max-time 3 --cacert "$work/pki/listener-ca.pem" -w '%{http_code}' \
    "https://127.0.0.1:$1/cert-status-by-serial/1" 2>/dev/null) || true
  [ "$code" = 000 ]
}
deadlocks=0
# A stuck edge Pebble: dump its goroutines into its log (SIGQUIT), start a new one, and a new
# edge with a fresh data directory (the new Pebble knows no account and no certificate).
recover_edge() { # variant (default | raised)
  deadlocks=$((deadlocks + 1))
  say "Pebble (edge) is deadlocked; its goroutine dump goes to pebble-edge.log; restarting Pebble and tenant-edge"
  kill -QUIT "$pebble_pid_edge" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pebble_pid_edge" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pebble_pid_edge" 2>/dev/null || true
  wait "$pebble_pid_edge" 2>/dev/null || true
  echo "==== bench-issuance: Pebble deadlocked (dump above); restarted ====" >>"$work/pebble-edge.log"
  stop_edge
  start_pebble edge "$pe_port" "$pe_mgmt" "$pe_dns" "$edge_http" "$edge_https"
  start_edge "$1-r$deadlocks"
}
# One edge phase; when Pebble deadlocked during it, recover and run it again (at most twice).
edge_phase() { # phase mode list variant
  local try
  for try in 1 2 3; do
    run_phase edge "$1" "$2" "$3"
    pebble_stuck "$pe_mgmt" || return 0
    fact "edge.$1.pebble_deadlocks" "$try"
    [ "$try" = 3 ] && { say "Pebble deadlocked three times during edge $1; keeping the last attempt"; return 0; }
    mv "$results/edge-$1.tsv" "$results/edge-$1-deadlocked-$try.tsv"
    recover_edge "$4"
    # The new edge creates its ACME account with the warm-up names (not counted).
    run_phase edge "w-r$deadlocks" seq "$work/list-edge-w.txt"
    pause
  done
}
phase() { # contender phase mode list
  if [ "$1" = edge ]; then
    edge_phase "$2" "$3" "$4" raised
  else
    run_phase "$@"
    if pebble_stuck "$pc_mgmt"; then
      fact "caddy.$2.pebble_deadlocks" 1
      say "Pebble (caddy) is deadlocked; Caddy's later figures are not valid"
    fi
  fi
}

contenders=${BENCH_ONLY:-edge caddy}
for who in edge caddy; do
  for p in b0 w a b c; do pick "${who:0:1}" "$p" "$who" >/dev/null; done
done
if [[ " $contenders " == *" edge "* ]]; then
  # b0: the edge as shipped (default limits, fresh data directory): N_PAR names at once.
  start_edge default
  edge_phase b0 par "$work/list-edge-b0.txt" default
  stop_edge
  start_edge raised
fi
for who in $contenders; do
  phase "$who" w seq "$work/list-$who-w.txt"
  pause
  phase "$who" a seq "$work/list-$who-a.txt"
  phase "$who" h seq "$work/list-$who-a.txt"
  pause
  phase "$who" b par "$work/list-$who-b.txt"
  pause
  phase "$who" c pool "$work/list-$who-c.txt"
  pause
done
scrape >"$results/edge-metrics-final.txt"

# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------
verdict=0
BENCH_CONCURRENCY=$conc python3 "$here/report.py" "$results" >"$results/summary.txt" || verdict=$?
# The load generator, both servers and both Pebbles share this machine's CPUs: say how busy it was.
load_end=$(cut -d' ' -f1 /proc/loadavg)
{
  echo
  echo "load average (1 min) at the end: $load_end on $(nproc) CPUs$(awk -v l="$load_end" -v n="$(nproc)" 'BEGIN { if (l > n) print " -- busier than its CPUs: the latencies above include waiting for a CPU" }')"
} >>"$results/summary.txt"
echo
cat "$results/summary.txt"
say "raw outputs: $results"
if [ "$verdict" != 0 ]; then
  say "tenant-edge missed some targets (see the table)"
  [ "${BENCH_STRICT:-0}" = 1 ] && exit "$verdict"
fi
exit 0
