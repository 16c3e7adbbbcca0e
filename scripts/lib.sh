# Shell helpers shared by scripts/bench-load.sh and scripts/bench-issuance.sh (sourced, not run).
# The caller defines `die` (prints its message and exits) and `$results` (where logs end up).

# A port on 127.0.0.1 that nothing listens on, below the ephemeral range (32768+) so the load
# generators' own client ports never collide with it, and not handed out twice in one run.
# Result in $REPLY.
taken=" "
free_port() {
  local p
  for _ in $(seq 1 500); do
    p=$((10000 + RANDOM % 20000))
    case "$taken" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      taken+="$p "
      REPLY=$p
      return 0
    fi
  done
  die "no free port found"
}

# Wait until something listens on 127.0.0.1:PORT; fail at once if PID died meanwhile.
wait_port() { # port pid what
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || die "$3 exited at start; its log is in $results"
    sleep 0.05
  done
  die "$3 is not listening on 127.0.0.1:$1 after 10 s"
}
