#!/usr/bin/env bash
# stop-slurm.sh: stop the local cluster started by scripts/start-slurm.sh.
#
# Usage: bash scripts/stop-slurm.sh [--wipe]
#   --wipe  also delete the state dir (spool, logs, job and accounting database, fake GPU
#           devices), so that the next start is fresh. The configs in /etc/slurm are kept.
#
# Only the daemons named by start-slurm.sh's PID files are stopped; nothing is killed by name.
# First every job still in the queue is cancelled, so that no slurmstepd or job process
# outlives slurmd (those are in no PID file). Then each daemon gets SIGTERM (SIGKILL after
# 10 s), in the reverse of start order. Safe to run when nothing is running.
set -uo pipefail
STATE=${SLURM_LOCAL_STATE:-/var/lib/slurm-local}
WIPE=0
case "${1:-}" in
  --wipe) WIPE=1 ;;
  "") ;;
  *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
esac

log() { echo "[stop-slurm] $*" >&2; }

running() { # running PID: alive and not a zombie (PID 1 may reap orphans late)
  kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

stop_pidfile() { # stop_pidfile NAME PIDFILE
  local name=$1 pf=$2 pid
  [ -s "$pf" ] || { log "$name: no pid file"; return 0; }
  pid=$(cat "$pf")
  if ! running "$pid"; then log "$name: not running (stale pid $pid)"; rm -f "$pf"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then
    log "$name: still alive after 10 s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null; sleep 0.5
  fi
  rm -f "$pf"
  log "$name: stopped (pid $pid)"
}

if [ -s "$STATE/run/slurmctld.pid" ] && running "$(cat "$STATE/run/slurmctld.pid")"; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    # wait (up to 30 s) until nothing runs or completes; KillWait is 5 s
    for _ in $(seq 1 150); do
      [ -z "$(squeue -h -t R,CG,CF -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

# reverse start order; slurmd first, so that it tears down running job steps
stop_pidfile slurmd    "$STATE/run/slurmd.pid"
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile slurmdbd  "$STATE/run/slurmdbd.pid"
stop_pidfile mariadbd  "$STATE/mysql-run/mariadbd.pid"
stop_pidfile munged    /run/munge/munged.pid

if [ $WIPE = 1 ] && [ -d "$STATE" ]; then
  case "$(realpath "$STATE")" in /|/var|/var/lib|/tmp|/root|/home) log "refusing to wipe $STATE"; exit 1 ;; esac
  log "wiping $STATE"
  rm -rf "$STATE"
fi
exit 0
