"""Which library modules a rule script runs: the rule's code inputs.

Snakemake re-runs a job when an input changes, so each rule lists the ``mneme`` modules its script
imports. Written by hand, such lists drift (a module imported through another one is easily
forgotten, and an edit to it then re-runs nothing), so they are read from the scripts themselves:
every ``mneme`` import, at any depth of the code (lazy imports inside functions included),
followed through the imported modules.
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

PACKAGE = "mneme"

# Modules that cannot change what a rule writes, only how it reports progress: not code inputs,
# so that editing the log format re-runs nothing. Their own imports are not followed either.
NOT_CODE = frozenset({"logs"})


def _direct_imports(path: Path, package_dir: Path) -> set[str]:
    """Names of the package's modules that the file at ``path`` imports anywhere in its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != PACKAGE:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from mneme import a, b
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
    return {m for m in found - NOT_CODE if (package_dir / f"{m}.py").is_file()}


@functools.cache
def library_modules(script: str | os.PathLike, package_dir: str | os.PathLike) -> tuple[str, ...]:
    """Paths of the modules of ``package_dir`` that ``script`` imports, directly or through others."""
    package_dir = Path(package_dir)
    seen: set[str] = set()
    todo = list(_direct_imports(Path(script), package_dir))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _direct_imports(package_dir / f"{name}.py", package_dir) - seen
    return tuple(str(package_dir / f"{m}.py") for m in sorted(seen))
