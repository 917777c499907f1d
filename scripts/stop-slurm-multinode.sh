#!/usr/bin/env bash
# stop-slurm-multinode.sh: stop the cluster of scripts/start-slurm-multinode.sh and undo its host
# changes: network namespaces <prefix>-*, the host veth <prefix>-host, /etc/netns/<prefix>-*.
#
# Usage: bash scripts/stop-slurm-multinode.sh [--wipe]
#   --wipe  also delete the state dir (configs, spool, logs, accounting database)
#
# Jobs still queued are cancelled first; then each slurmd, and any process still left in a node's
# namespace (all of them were started by that slurmd), is stopped by PID; then slurmctld,
# slurmdbd and MariaDB. munged is shared with the single-node cluster and stays up. The same
# SLURM_MN_STATE and SLURM_MN_PREFIX as at start. Safe to run when nothing is running.
set -uo pipefail
STATE=${SLURM_MN_STATE:-/var/lib/slurm-multinode}
PREFIX=${SLURM_MN_PREFIX:-slmn}
export SLURM_CONF=$STATE/etc/slurm.conf   # never the single-node cluster's /etc/slurm
WIPE=0
case "${1:-}" in
  --wipe) WIPE=1 ;;
  "") ;;
  *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
esac

log() { echo "[stop-slurm-multinode] $*" >&2; }
running() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
stop_pid() { # stop_pid NAME PID: TERM, KILL after 10 s
  local name=$1 pid=$2
  running "$pid" || return 0
  kill -TERM "$pid"
  for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then log "$name: still alive after 10 s, SIGKILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
  log "$name: stopped (pid $pid)"
}
stop_pidfile() { # stop_pidfile NAME PIDFILE
  [ -s "$2" ] || return 0
  stop_pid "$1" "$(cat "$2")"
  rm -f "$2"
}
netns_list() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-"; }

if [ -f "$SLURM_CONF" ] && [ -s "$STATE/run/slurmctld.pid" ] && running "$(cat "$STATE/run/slurmctld.pid")"; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 150); do
      [ -z "$(squeue -h -t R,CG,CF -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

for pf in "$STATE"/run/slurmd-*.pid; do
  [ -e "$pf" ] || continue
  name=$(basename "$pf" .pid)
  stop_pidfile "$name" "$pf"
done
# whatever is still in a node's namespace was started by its slurmd (job steps, their children)
for ns in $(netns_list); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    log "$ns: leftover process $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-80))"
    stop_pid "$ns:$pid" "$pid"
  done
done
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile slurmdbd  "$STATE/run/slurmdbd.pid"
stop_pidfile mariadbd  "$STATE/mysql-run/mariadbd.pid"

for ns in $(netns_list); do
  ip netns del "$ns" && log "deleted netns $ns"
  rm -rf "/etc/netns/$ns"
done
rmdir /etc/netns 2>/dev/null   # if only ours were in it
# deleting the bridge namespace deletes the veth pair; this catches a half-built start
ip link del "$PREFIX-host" 2>/dev/null && log "deleted $PREFIX-host"

if [ $WIPE = 1 ] && [ -d "$STATE" ]; then
  case "$(realpath "$STATE")" in /|/var|/var/lib|/tmp|/root|/home|/var/lib/slurm-local) log "refusing to wipe $STATE"; exit 1 ;; esac
  log "wiping $STATE"
  rm -rf "$STATE"
fi
exit 0
