"""Names and files the package ships: the bottom of the import graph (imports nothing from hpc_eval).

`configs/` and `templates/` live at the top level of the repository and ship inside the package
(see pyproject.toml); an editable install reads them in place.
"""

from __future__ import annotations

from pathlib import Path

RUNTIMES = ("docker", "pyxis", "apptainer", "host")  # also the order `auto` tries them in
RUNTIME_CHOICES = ("auto", *RUNTIMES)
BUILTIN_CONFIGS = Path(__file__).parent / "configs"
if not BUILTIN_CONFIGS.is_dir():  # an editable install: the top-level configs/ folder
    BUILTIN_CONFIGS = Path(__file__).parent.parent / "configs"
TEMPLATES = BUILTIN_CONFIGS.parent / "templates"
