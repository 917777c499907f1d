#!/usr/bin/env bash
# stop-docker.sh [--wipe]: stop the private dockerd of scripts/start-docker.sh by its PID file,
# remove its containers first, and delete the docker0 bridge when it created it. --wipe also
# deletes its state (images included: the next build-test-image.sh builds from scratch).
set -uo pipefail
dir=${HPC_EVAL_DOCKER_DIR:-/var/tmp/hpc-eval-docker}
log() { echo "[docker] $*" >&2; }
export DOCKER_HOST="unix://$dir/docker.sock"
pidfile="$dir/dockerd.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  pid=$(cat "$pidfile")
  ids=$(docker ps -aq 2>/dev/null)
  if [ -n "$ids" ]; then
    docker kill $ids >/dev/null 2>&1   # kill then rm: `rm -f` on a running container may stop it first
    docker rm $ids >/dev/null 2>&1
  fi
  kill -TERM "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { log "dockerd $pid ignored TERM for 20 s: KILL"; kill -KILL "$pid"; }
  log "dockerd $pid stopped"
fi
if [ -f "$dir/created-docker0" ]; then
  ip link delete docker0 2>/dev/null
  rm -f "$dir/created-docker0"
fi
if [ "${1:-}" = "--wipe" ]; then
  umount -R "$dir/exec" "$dir/root" 2>/dev/null
  rm -rf "$dir"
  log "wiped $dir"
fi
exit 0
