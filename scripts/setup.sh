#!/usr/bin/env bash
# setup.sh [--fresh]: what hpc-eval's demo and tests need, on a fresh Debian 12 machine, as root.
#   1. Debian packages: python3-venv, curl (the launcher's health checks), util-linux (runuser,
#      for the docker test as an unprivileged user), procps (pkill, used by the launcher's kill);
#   2. .venv with `pip install -e '.[test]'` (again only when pyproject.toml changed);
#   3. a real single-node Slurm (scripts/start-slurm.sh, which installs its own packages;
#      --fresh wipes an earlier cluster's state first).
# Idempotent: a second run with everything in place takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[setup] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root: apt-get and the Slurm daemons need it"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v curl >/dev/null || need+=(curl ca-certificates)
command -v runuser >/dev/null || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)
command -v pkill >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing hpc-eval and its test extras into .venv (about a minute)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi

bash scripts/start-slurm.sh "$@"
