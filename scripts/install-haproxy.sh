#!/usr/bin/env bash
# Debian's haproxy: the load balancer in front of a multi-instance evaluation's servers with the
# host runtime (hpc_eval/executor_scripts.py; the container runtimes run the proxy image instead).
set -euo pipefail
command -v haproxy >/dev/null && { haproxy -v | head -1; exit 0; }
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null
haproxy -v | head -1
