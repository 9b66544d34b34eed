"""Set-up files agree with each other: conda envs mirror the pip pins."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def pins(path: Path) -> tuple[set[str], set[str]]:
    """(normal pins, pins marked '# --no-deps') of a requirements file."""
    normal, nodeps = set(), set()
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            (nodeps if "--no-deps" in line else normal).add(spec)
    return normal, nodeps


def conda_pip_pins(path: Path) -> set[str]:
    env = yaml.safe_load(path.read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return set(pip[0]["pip"]) if pip else set()


def test_every_pin_is_exact():
    normal, nodeps = pins(REPO / "requirements.txt")
    assert all("==" in p for p in normal | nodeps)
    assert "torch==2.13.0" in normal  # the CPU wheel on our machines (docs/environment.md)


def test_conda_env_mirrors_requirements():
    normal, nodeps = pins(REPO / "requirements.txt")
    assert conda_pip_pins(REPO / "envs" / "mneme.yaml") == normal
    post = (REPO / "envs" / "mneme.post-deploy.sh").read_text()
    assert all(f"pip install --no-deps {p}" in post for p in nodeps)


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.strip().startswith('"../envs/'):
                assert (REPO / "rules" / line.strip().strip('"')).resolve().is_file(), line
