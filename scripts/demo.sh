#!/usr/bin/env bash
# demo.sh: hpc-eval end to end on this machine, in a few minutes, with no GPU and no network
# beyond the Debian and PyPI package mirrors. Run it as root from a clone:  bash scripts/demo.sh
#
#   1-2. scripts/setup.sh: installs what is missing (Debian packages; Slurm, munge and MariaDB;
#      .venv with `pip install -e '.[test]'`, whose test extras bring the bfcl harness, whose
#      benchmark data ships in its wheel) and starts a local single-node Slurm if none runs;
#   3. starts the stub OpenAI-compatible server (scripts/fake_openai.py) on a free port;
#   4. creates a fake Megatron Bridge training run with 3 checkpoints (iter_0000100..300);
#   5. `hpc-eval submit --all` over them: one Slurm job array, each task running a real bfcl
#      evaluation against the stub through the launcher, with the host runtime (scripts/demo.yaml);
#   6. waits for the array (`hpc-eval status --json`), then prints `hpc-eval results`.
# On exit, even after an error or Ctrl-C, it cancels its jobs and stops the stub and, if it
# started it, Slurm. The evaluation files stay in the demo directory (HPC_EVAL_DEMO_DIR, default a
# new /tmp/hpc-eval-demo.XXXXXX).
set -euo pipefail

cd "$(dirname "$0")/.."
T0=$SECONDS
log() { echo "[demo +$((SECONDS - T0))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: the local Slurm daemons and apt-get need it"

# ---------------------------------------------------------------- 1-2. packages, .venv, Slurm
sinfo -h >/dev/null 2>&1 && STARTED_SLURM=0 || STARTED_SLURM=1
bash scripts/setup.sh            # idempotent: installs what is missing, starts Slurm if it is down
export NEMO_EVALUATOR_TELEMETRY_LEVEL=0  # nothing leaves this machine

DEMO_DIR=${HPC_EVAL_DEMO_DIR:-$(mktemp -d /tmp/hpc-eval-demo.XXXXXX)}
mkdir -p "$DEMO_DIR"
STUB_PID="" JOB_IDS=""
cleanup() {
  local rc=$?
  [ -z "$JOB_IDS" ] || scancel $JOB_IDS 2>/dev/null || true
  if [ -n "$STUB_PID" ]; then kill "$STUB_PID" 2>/dev/null || true; wait "$STUB_PID" 2>/dev/null || true; fi
  if [ "$STARTED_SLURM" = 1 ]; then log "stopping the Slurm this demo started"; bash scripts/stop-slurm.sh >/dev/null 2>&1 || true; fi
  log "done (exit $rc); files in $DEMO_DIR"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 3. the stub model server
REPLY='[calculate_triangle_area(base=10, height=5)]' LOG="$DEMO_DIR/stub-requests.jsonl" \
  .venv/bin/python scripts/fake_openai.py 0 > "$DEMO_DIR/stub.out" 2>&1 &
STUB_PID=$!
for _ in $(seq 50); do grep -q listening "$DEMO_DIR/stub.out" && break; sleep 0.2; done
STUB_URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$DEMO_DIR/stub.out") || die "the stub did not start: $(cat "$DEMO_DIR/stub.out")"
export STUB_URL
log "stub model server: $STUB_URL"

# ---------------------------------------------------------------- 4. a fake training run
RUN_DIR="$DEMO_DIR/my-run/checkpoints"
.venv/bin/python -c 'import sys; sys.path.insert(0, "tests"); from support.fakeckpt import make_run; make_run(sys.argv[1], [100, 200, 300])' "$RUN_DIR"
log "fake Megatron Bridge run: $RUN_DIR ($(ls "$RUN_DIR" | grep -c '^iter_') checkpoints)"

# ---------------------------------------------------------------- 5. one array over all checkpoints
OUT="$DEMO_DIR/evals"
log "hpc-eval submit -c scripts/demo.yaml --checkpoint $RUN_DIR --all --output-dir $OUT"
.venv/bin/hpc-eval submit -c scripts/demo.yaml --checkpoint "$RUN_DIR" --all --output-dir "$OUT" --json > "$DEMO_DIR/submit.json"
JOB_IDS=$(.venv/bin/python -c 'import json, sys; print(" ".join(j["job_id"] for j in json.load(open(sys.argv[1]))["jobs"]))' "$DEMO_DIR/submit.json")
log "submitted array job $JOB_IDS"

# ---------------------------------------------------------------- 6. wait, then the results table
states() {
  .venv/bin/hpc-eval status "$OUT" --json | .venv/bin/python -c \
    'import json, sys; print(" ".join(sorted(row["state"] for row in json.load(sys.stdin))))'
}
FINAL=" COMPLETED FAILED CANCELLED TIMEOUT OUT_OF_MEMORY NODE_FAIL BOOT_FAIL DEADLINE "
all_final() { local state; for state in $1; do [[ $FINAL == *" $state "* ]] || return 1; done; }
deadline=$((SECONDS + 600))
until now=$(states) && [ -n "$now" ] && all_final "$now"; do
  [ $SECONDS -lt $deadline ] || die "the jobs did not finish within 10 minutes: $now"
  sleep 2
done
log "all evaluations ended: $now"
.venv/bin/hpc-eval status "$OUT"
echo
.venv/bin/hpc-eval results "$OUT"
JOB_IDS=""  # finished: nothing to cancel
for state in $now; do [ "$state" = COMPLETED ] || die "an evaluation ended $state (see hpc-eval status $OUT)"; done
