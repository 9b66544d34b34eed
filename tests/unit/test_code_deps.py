"""Rule code inputs are read from the scripts' imports, followed through the library."""

from pathlib import Path

from conftest import REPO
from mneme.code_deps import library_modules


def test_imports_are_followed_through_the_package(tmp_path):
    pkg = tmp_path / "mneme"
    pkg.mkdir()
    (pkg / "a.py").write_text("import numpy\nfrom mneme.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from mneme import c  # lazy\n    return c\n")
    (pkg / "c.py").write_text("import mneme.a  # a cycle back\n")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "rule.py"
    script.write_text("import os\nfrom mneme.a import x\nfrom mneme import notamodule\n")
    found = [Path(p).name for p in library_modules(script, pkg)]
    assert found == ["a.py", "b.py", "c.py"]


def test_indirect_imports_of_real_scripts_are_inputs():
    mods = {
        Path(p).stem
        for p in library_modules(
            REPO / "workflow_scripts" / "reverse.py", REPO / "workflow_scripts" / "mneme"
        )
    }
    # reverse -> reversal -> organism -> organism_options / hooks: all re-run it when edited
    assert {"reversal", "organism", "organism_options", "hooks", "benchmark", "mmlu"} <= mods
    assert "report" not in mods


def test_the_organism_does_not_depend_on_extraction():
    """Both stop the forward pass with mneme.hooks: an edit to extraction re-runs no organism."""
    mods = {
        Path(p).stem
        for p in library_modules(
            REPO / "workflow_scripts" / "make_organism.py", REPO / "workflow_scripts" / "mneme"
        )
    }
    assert "hooks" in mods and "organism" in mods
    assert not mods & {"extraction", "activation_store", "logs"}
