#!/usr/bin/env bash
# `make run`: the demo upstream on 127.0.0.1:3000 and tenant-edge on conf/dev.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug

"$bin/demo-upstream" --listen 127.0.0.1:3000 --name demo &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT INT TERM

"$bin/tenant-edge" check -c conf/dev.yaml >/dev/null || "$bin/tenant-edge" check -c conf/dev.yaml

"$bin/tenant-edge" run -c conf/dev.yaml &
edge=$!
trap 'kill $edge $upstream 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
  if [ -f data/dev/ca/root.pem ] && (exec 3<>/dev/tcp/127.0.0.1/8443) 2>/dev/null; then break; fi
  sleep 0.1
done
cat <<MSG

tenant-edge is running (Ctrl-C to stop). Try:

  curl --cacert data/dev/ca/root.pem https://shop.localhost:8443/
  curl -i http://shop.localhost:8880/hello        # 308 to https
  curl -s http://127.0.0.1:9731/metrics | grep tenant_edge_

Any name under .localhost works; each gets its own certificate from the internal CA.

MSG
wait $edge
