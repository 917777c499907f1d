#!/usr/bin/env bash
# test.sh [PYTEST ARGS...]: set up (scripts/setup.sh) and run the whole test suite, Slurm tests
# against the real local Slurm, docker tests against a private docker daemon
# (scripts/start-docker.sh) with the bfcl image built locally (scripts/build-test-image.sh: ~70 s
# the first time, cached after). DOCKER_HOST is not exported: only the tests that ask for the
# daemon (fixture real_docker) see it. Exits non-zero when a test fails or when no test ran.
# HPC_EVAL_FRESH_SLURM=1 starts Slurm from a wiped state (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ${HPC_EVAL_FRESH_SLURM:+--fresh}
# 2 nodes for tests marked multinode; where namespaces are not allowed they skip, except in CI
bash scripts/start-slurm-multinode.sh ${HPC_EVAL_FRESH_SLURM:+--fresh} || [ "${HPC_EVAL_REQUIRE_MULTINODE:-}" != 1 ]
bash scripts/install-haproxy.sh   # multi-instance evaluations' load balancer (host runtime)
command -v scrontab >/dev/null || bash scripts/build-scrontab.sh   # Debian ships no scrontab client
bash scripts/start-docker.sh >/dev/null
bash scripts/build-test-image.sh
rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
[ "$rc" != 5 ] || { echo "[test] pytest collected no tests: that is a failure" >&2; rc=1; }
exit "$rc"
