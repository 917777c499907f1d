"""hpc-eval: evaluate LLM checkpoints on Slurm with NeMo Evaluator Launcher and submitit.

The Python API (hpc_eval/api.py) is re-exported here lazily: `import hpc_eval` and `hpc-eval --help`
import neither the launcher nor submitit.
"""

__version__ = "0.1.0"

API = ("load", "submit", "validate", "watch", "watch_pass", "status", "results", "missing_results",
       "resubmit_missing", "logs", "show_config")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from hpc_eval import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpc_eval' has no attribute {name!r}")
