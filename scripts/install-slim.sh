#!/usr/bin/env bash
# Install hpc-eval into a venv without leptonai/ray (~70 MB instead of ~440 MB).
#
# The launcher declares `leptonai` (which pulls `ray`, 240 MB) as a hard dependency but imports it
# only for its Lepton executor, which hpc-eval never uses. pip constraints cannot drop a hard
# dependency, so the launcher and nemo-evaluator go in with --no-deps and their other
# dependencies are listed here (from their 0.2.6 / 0.2.8 metadata).
#
#   scripts/install-slim.sh VENV_DIR [SOURCE]     SOURCE: this checkout (default) or `hpc-eval[...]`
set -euo pipefail
venv="${1:?usage: install-slim.sh VENV_DIR [SOURCE]}"
source="${2:-$(cd "$(dirname "$0")/.." && pwd)}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" --no-deps "nemo-evaluator-launcher==0.2.6" "nemo-evaluator==0.2.8"
"${pip[@]}" "httpx>=0.27.2,<1" "hydra-core>=1.3.2,<2" "jinja2>=3.1.6,<4" "python-dotenv>=1" "pydantic>=2,<3" "pyyaml>=6" "tomli>=2,<3; python_version < '3.11'" \
    "requests>=2.32.4" "simple-parsing>=0.1.7,<0.2" "structlog>=25.4,<26" "tabulate>=0.9,<0.10" \
    flask psutil waitress werkzeug yq
# hpc-eval itself with --no-deps too, or pip would fetch leptonai for the launcher's requirement.
"${pip[@]}" --no-deps "$source"
"${pip[@]}" "submitit>=1.5,<1.6" "omegaconf>=2.3" "click>=8.1"
echo "installed: $("$venv/bin/python" -m pip freeze | wc -l) packages, $(du -sm "$venv" | cut -f1) MB in $venv"
