"""hpc-eval: evaluate LLM checkpoints on Slurm with NeMo Evaluator Launcher and submitit.

The Python API is `hpc_eval.api` (one function per command). Its functions are not re-exported
here: `submit`, `watch`, `status` and `results` are also module names of this package, and
importing such a module rebinds the package's attribute to it.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "api":  # `import hpc_eval; hpc_eval.api.submit(...)` without importing it up front
        import importlib

        return importlib.import_module("hpc_eval.api")
    raise AttributeError(f"module 'hpc_eval' has no attribute {name!r}")
