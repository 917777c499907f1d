"""The package's floor plan: no import circle, the job side apart from the login side, small modules.

Every module is parsed with `ast` (nothing is imported), and imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpc_eval"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
# What runs inside the Slurm job, and what runs only on the login node.
JOB_SIDE = {"payload", "cleanup", "executor", "executor_options", "executor_scripts", "launcher_tree"}
LOGIN_SIDE = {
    "cli",
    "cli_options",
    "cli_read",
    "cli_submit",
    "api",
    "output",
    "config",
    "overrides",
    "preflight",
    "submit",
    "sbatch",
    "watch",
    "status",
    "job_states",
    "results",
    "slurm",
}
BOTTOM = {"resources", "errors"}  # import nothing from the package
MAX_LINES = 400


def package_imports(module: str) -> set[str]:
    """The hpc_eval modules `module` imports, at any level (functions and TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: `from . import x`, `from .x import y`
            names = [f"hpc_eval.{node.module}" if node.module else f"hpc_eval.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(
            name.split(".")[1] for name in names if name.startswith("hpc_eval.") and name.split(".")[1] in MODULES
        )
    return found - {module}


GRAPH = {module: package_imports(module) for module in MODULES}


def test_the_layout_knows_every_module():
    assert JOB_SIDE | LOGIN_SIDE | BOTTOM <= set(MODULES)


def test_no_import_circle():
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_job_side_imports_nothing_of_the_login_side():
    crossings = {
        module: sorted(GRAPH[module] & LOGIN_SIDE) for module in sorted(JOB_SIDE) if GRAPH[module] & LOGIN_SIDE
    }
    assert crossings == {}


def test_the_bottom_modules_import_nothing_of_the_package():
    assert {module: sorted(GRAPH[module]) for module in sorted(BOTTOM) if GRAPH[module]} == {}


def test_results_reads_the_launcher_tree_not_the_payload():
    assert "payload" not in GRAPH["results"] and "launcher_tree" in GRAPH["results"]


CLI_MODULES = {"cli", "cli_options", "cli_read", "cli_submit"}


def test_the_cli_reaches_the_library_through_the_api():
    """Commands parse, call api.py and format with output.py (watch: its options and the cron text)."""
    reached = set().union(*(GRAPH[module] for module in CLI_MODULES)) - CLI_MODULES
    assert reached <= {"api", "output", "errors", "watch"}


def test_the_group_only_gathers_the_commands():
    """cli.py holds the `hpc-eval` group; no command module imports it back."""
    assert GRAPH["cli"] <= {"cli_read", "cli_submit"}
    assert all("cli" not in GRAPH[module] for module in CLI_MODULES)


def test_modules_stay_small():
    sizes = {module: len((PACKAGE / f"{module}.py").read_text().splitlines()) for module in MODULES}
    too_long = {module: lines for module, lines in sizes.items() if lines > MAX_LINES}
    assert too_long == {}, f"split these modules (at most {MAX_LINES} lines): {too_long}"
