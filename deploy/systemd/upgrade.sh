#!/bin/sh
# Zero-downtime swap of a running tenant-edge for a new binary (and/or a changed config):
# Pingora's graceful upgrade. tenant-edge.service runs it as ExecReload=, so
#
#   install -m 0755 tenant-edge /usr/local/bin/tenant-edge && systemctl reload tenant-edge
#
# replaces the process without refusing a connection. By hand, run it as the service user
# with the service's environment (DATABASE_URL, ...).
#
# How Pingora hands over (pingora-core 0.9.1, src/server/):
#   - `run -u` binds the unix socket server.upgrade_sock and waits there about 6 s
#     (transfer_fd: 5 retries, 1 s apart) for the running process to send its listening
#     sockets; with -d it then forks into the background, moving the old pid file aside
#     (<pid_file>.old) and writing its own pid.
#   - SIGQUIT makes the running process connect to that socket (retrying about 5 s), send its
#     listeners, stop accepting, wait 5 s, then drain for server.grace_period and
#     server.graceful_shutdown_timeout, and exit.
#   - The old process shuts down after SIGQUIT even if nobody took its sockets. So the new
#     process must be started, and seen listening on the upgrade socket, BEFORE the SIGQUIT;
#     this script never sends it otherwise. (Pingora's docs/user_guide/systemd.md sends
#     SIGQUIT first and lets the old process retry for those 5 s; a new binary that then
#     fails to start leaves nothing listening. And tenant-edge's `run -u -d` waits for the
#     sockets in the foreground, before it forks, so it cannot run as a plain ExecReload=
#     line ahead of the SIGQUIT either.)
#
# Exit status 0: the new process holds the listeners and its pid is in the pid file (systemd
# reads the new main pid from PIDFile= when ExecReload= returns). Non-zero before the SIGQUIT:
# nothing changed, the old process serves on. Non-zero after it: see the message.
set -eu

bin=${TENANT_EDGE_BIN:-/usr/local/bin/tenant-edge}
config=${TENANT_EDGE_CONFIG:-/etc/tenant-edge/tenant-edge.yml}
# Must be the config's server.pid_file and server.upgrade_sock.
pid_file=${TENANT_EDGE_PID_FILE:-/run/tenant-edge/tenant-edge.pid}
sock=${TENANT_EDGE_UPGRADE_SOCK:-/run/tenant-edge/upgrade.sock}

say() { echo "tenant-edge upgrade: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# The pid in a pid file, or nothing.
read_pid() {
    p=$(cat "$1" 2>/dev/null || true)
    case "$p" in
    '' | *[!0-9]*) ;;
    *) echo "$p" ;;
    esac
}

# Running and not a zombie (an exited child stays a zombie until `wait`).
alive() {
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

old=$(read_pid "$pid_file")
[ -n "$old" ] || die "no pid in $pid_file: is tenant-edge running (in daemon mode, -d)?"
alive "$old" || die "pid $old from $pid_file is not running"

# 1. The new binary must load this config and build everything before anything is touched.
if ! "$bin" run -t -c "$config"; then
    die "$bin refuses $config (see above); pid $old keeps serving, nothing changed"
fi

# 2. Start the new process. It creates $sock and waits there for the listeners.
rm -f "$sock"
"$bin" run -u -d -c "$config" &
new=$!

# 3. Only once it listens on the socket: SIGQUIT the old one.
tries=0
while [ ! -S "$sock" ]; do
    if ! alive "$new"; then
        wait "$new" || true
        die "the new process exited before creating $sock; pid $old keeps serving, nothing changed"
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 50 ]; then
        kill "$new" 2>/dev/null || true
        wait "$new" || true
        die "no $sock after 5 s (is it the config's server.upgrade_sock?); pid $old keeps serving"
    fi
    sleep 0.1
done
say "pid $old: handing its listeners to the new process"
kill -QUIT "$old"

# 4. The new process exits 0 once it holds the listeners and has forked its daemon.
if ! wait "$new"; then
    die "the new process did not take over the listeners; pid $old is shutting down anyway (systemd restarts the service: Restart=always)"
fi

# 5. Its pid is in the pid file before this script returns (systemd reads it then).
tries=0
while :; do
    cur=$(read_pid "$pid_file")
    if [ -n "$cur" ] && [ "$cur" != "$old" ] && alive "$cur"; then
        break
    fi
    tries=$((tries + 1))
    [ "$tries" -le 50 ] || die "the new process took the listeners but $pid_file does not name a running process"
    sleep 0.1
done
say "pid $cur serves now; pid $old finishes its open connections and exits"
