"""hpc-eval: evaluate LLM checkpoints on Slurm with NeMo Evaluator Launcher and submitit."""

__version__ = "0.1.0"
