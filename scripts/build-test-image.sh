#!/usr/bin/env bash
# build-test-image.sh: the bfcl evaluation image for the tests and the demo, built locally (no
# registry can be pulled from here): Debian bookworm by mmdebstrap from the apt mirror, plus a venv
# with the harness from the pip index, piped into `docker import` (~70 s, ~470 MB).
# It is tagged with the name the launcher's task catalogue gives bfcl, so configs need no
# `container` override (an override makes the launcher refuse the task as unlisted). The same
# image serves a `generic` deployment's server in the tests: scripts/fake_openai.py needs only python3.
# Cached: rebuilt only when this recipe changes (its hash is stored as the image label
# hpc-eval.recipe). Needs the daemon of scripts/start-docker.sh (DOCKER_HOST defaults to it).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${HPC_EVAL_TEST_IMAGE:-nvcr.io/nvidia/eval-factory/bfcl:26.03}
PACKAGES="nvidia-bfcl==26.3 nemo-evaluator==0.2.8"   # the harness tests/ and pyproject.toml use
export DOCKER_HOST=${DOCKER_HOST:-unix://${HPC_EVAL_DOCKER_DIR:-/var/tmp/hpc-eval-docker}/docker.sock}
log() { echo "[image] $*" >&2; }

recipe=$( { sed -n '/^# --- recipe/,$p' "$0"; echo "$PACKAGES"; } | sha256sum | cut -c1-16)
have=$(docker image inspect --format '{{ index .Config.Labels "hpc-eval.recipe" }}' "$IMAGE" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  log "$IMAGE is up to date (recipe $recipe)"
  exit 0
fi
log "building $IMAGE (recipe $recipe; about 70 s)"
start=$SECONDS
# --- recipe: everything below is hashed into the image label
mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,curl \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt"; cp /etc/resolv.conf "$1/etc/resolv.conf"' \
  --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
  --customize-hook="chroot \"\$1\" env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install -q --no-cache-dir $PACKAGES" \
  --customize-hook='rm -f "$1/tmp/host-ca.crt"; : > "$1/etc/resolv.conf"; mkdir -p "$1/workspace"; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm - http://deb.debian.org/debian \
| docker import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /workspace' --change 'CMD ["bash"]' --change "LABEL hpc-eval.recipe=$recipe" - "$IMAGE" >/dev/null
log "built $IMAGE in $((SECONDS - start)) s"
