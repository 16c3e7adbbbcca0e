#!/usr/bin/env bash
# One HTTPS request for NAME with curl, printed as one tab-separated line (make bench-issuance):
#   name  http_code  time_connect  time_appconnect  time_starttransfer  time_total  exit  error
# time_connect is when the TCP handshake finished, i.e. when the ClientHello leaves, so
# time_starttransfer - time_connect is "ClientHello to first response byte".
# Environment: FETCH_PORT (TLS port), FETCH_CA (the issuing root to trust), FETCH_TIMEOUT (s).
set -u
name=$1
out=$(curl -s -o /dev/null --max-time "${FETCH_TIMEOUT:-30}" \
  --resolve "$name:$FETCH_PORT:127.0.0.1" --cacert "$FETCH_CA" \
  -w '%{http_code}\t%{time_connect}\t%{time_appconnect}\t%{time_starttransfer}\t%{time_total}\t%{exitcode}\t%{errormsg}' \
  "https://$name:$FETCH_PORT/")
printf '%s\t%s\n' "$name" "$out"
