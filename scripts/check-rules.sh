#!/usr/bin/env bash
# Check deploy/prometheus/tenant-edge-alerts.yml and the PromQL of deploy/grafana/tenant-edge.json
# with promtool (Debian: `apt-get install prometheus`, or extract `promtool` from that package).
# The Rust test tests/it/dashboards.rs checks names against a running edge without promtool;
# this adds Prometheus' own parser and the alert unit tests (tenant-edge-alerts.test.yml).
#
# Usage: scripts/check-rules.sh            (PROMTOOL=/path/to/promtool to override)
set -euo pipefail

cd "$(dirname "$0")/.."
PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$PROMTOOL" ]; then
    echo "promtool not found: install Debian's 'prometheus' package or set PROMTOOL" >&2
    exit 2
fi
command -v jq >/dev/null || { echo "jq is needed to read the dashboard" >&2; exit 2; }

rules=deploy/prometheus/tenant-edge-alerts.yml
dashboard=deploy/grafana/tenant-edge.json

"$PROMTOOL" check rules "$rules"
(cd deploy/prometheus && "$PROMTOOL" test rules tenant-edge-alerts.test.yml)

# Every panel query of the dashboard becomes a recording rule, with Grafana's variables
# replaced by values Prometheus accepts, so that promtool parses it.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
    echo "groups:"
    echo "  - name: dashboard"
    echo "    rules:"
    jq -r '.. | objects | select(has("expr")) | .expr' "$dashboard" |
        sed -e 's/\$__rate_interval/5m/g; s/\$__interval/1m/g; s/\$__range/1h/g' \
            -e 's/\$instance/.*/g; s/\$pool/.*/g' |
        { n=0; while IFS= read -r expr; do
            n=$((n + 1))
            printf '      - record: dashboard:expr_%d\n        expr: %s\n' "$n" "$(jq -Rn --arg e "$expr" '$e')"
        done; }
} >"$tmp/dashboard-rules.yml"
echo "dashboard: $(grep -c 'record:' "$tmp/dashboard-rules.yml") panel queries"
"$PROMTOOL" check rules "$tmp/dashboard-rules.yml"
