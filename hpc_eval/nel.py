"""`python -m hpc_eval.nel EVAL_DIR NEL_ARGS...`: the launcher's own `nel` on one of our evaluations.

Each evaluation keeps its own launcher exec DB (launcher-state/exec-db/exec.v1.jsonl), and its
jobs are recorded with executor `hpc_eval`, which a plain `nel` process has never heard of:
`nel status` reports "Executor hpc_eval not found". This entry point points the launcher at the
evaluation's exec DB and registers the executor first, then hands over to `nel`'s own main.
(`nel info` still cannot work: it has a fixed list of executors; `hpc-eval logs` shows the same paths.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hpc_eval.store import EvalPaths

USAGE = "usage: python -m hpc_eval.nel EVAL_DIR {status,ls,export,logs,kill} [ARGS...]  (EVAL_DIR holds request.json)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or not (Path(args[0]) / "request.json").exists():
        print(f"Error: {USAGE}", file=sys.stderr)
        return 2
    paths = EvalPaths(Path(args[0]))
    os.environ["NEMO_EVALUATOR_EXEC_DB_FILE"] = str(paths.launcher_state / "exec-db" / "exec.v1.jsonl")
    from hpc_eval.executor import register
    from hpc_eval.launcher import import_launcher

    import_launcher()
    register()
    from nemo_evaluator_launcher.cli.main import main as nel_main

    sys.argv = ["nel", *args[1:]]
    return nel_main() or 0


if __name__ == "__main__":
    sys.exit(main())
