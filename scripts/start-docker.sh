#!/usr/bin/env bash
# start-docker.sh: a private docker daemon for the tests and the demo, on Debian 12, as root.
#   * installs docker.io (and mmdebstrap, which scripts/build-test-image.sh uses) when missing;
#   * starts dockerd with all its state under $HPC_EVAL_DOCKER_DIR (default /var/tmp/hpc-eval-docker)
#     and listening ONLY on $HPC_EVAL_DOCKER_DIR/docker.sock, never /var/run/docker.sock: other
#     users of this machine must not see a daemon (`execution.runtime: auto` would pick docker);
#   * host network: no iptables rules, ip_forward untouched (--iptables=false --ip-forward=false).
#     The default bridge network is kept, as on a real docker host: a server container with
#     `-p PORT:PORT` is reached from the host through docker-proxy, and one that binds 127.0.0.1
#     is not (the tests check what the user is told then). Containers get no outbound network,
#     which nothing here needs. The docker0 bridge it creates is deleted by stop-docker.sh;
#   * a no-op nvidia-container-runtime-hook on dockerd's PATH: dockerd then accepts `--gpus`
#     without a GPU or the NVIDIA toolkit, and sets NVIDIA_VISIBLE_DEVICES in the container.
# Idempotent: a running daemon is reused. Prints `export DOCKER_HOST=...` for a shell to eval.
# Stop it with scripts/stop-docker.sh (by its PID file).
set -euo pipefail
dir=${HPC_EVAL_DOCKER_DIR:-/var/tmp/hpc-eval-docker}
sock="$dir/docker.sock"
log() { echo "[docker] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root: apt-get and dockerd need it"; exit 1; }

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
getent group docker >/dev/null || groupadd --system docker   # the socket's group

export DOCKER_HOST="unix://$sock"
if [ -f "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null && docker info >/dev/null 2>&1; then
  log "dockerd already running (pid $(cat "$dir/dockerd.pid"))"
  echo "export DOCKER_HOST=$DOCKER_HOST"
  exit 0
fi

mkdir -p "$dir/bin" "$dir/root" "$dir/exec"
chmod 755 "$dir"   # the socket (group docker) must be reachable by docker-group users
printf '#!/bin/sh\n# no-op OCI hook: makes dockerd accept --gpus without the NVIDIA toolkit\ncat >/dev/null\nexit 0\n' \
  > "$dir/bin/nvidia-container-runtime-hook"
chmod 755 "$dir/bin/nvidia-container-runtime-hook"
ip link show docker0 >/dev/null 2>&1 || : > "$dir/created-docker0"   # stop-docker.sh deletes only ours

PATH="$dir/bin:$PATH" setsid dockerd --host "unix://$sock" --group docker \
  --data-root "$dir/root" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
  --iptables=false --ip-forward=false --ip-masq=false \
  > "$dir/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && break
  sleep 0.5
done
docker info >/dev/null 2>&1 || { log "dockerd did not answer within 30 s:"; tail -20 "$dir/dockerd.log" >&2; exit 1; }
log "dockerd running (pid $(cat "$dir/dockerd.pid")), socket $sock"
echo "export DOCKER_HOST=$DOCKER_HOST"
