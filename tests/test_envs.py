"""Every rule's conda env exists, and its pins equal the pip pins the venv is built from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

CONDA_DIRECTIVE = re.compile(r'^\s*conda:\s*\n\s*"([^"]+)"', re.M)
RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+):", re.M)


def _pins(lines: list[str], sep: str) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, _, version = line.partition(sep)
        pins[_canonical(name)] = version.strip()
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _requirements() -> dict[str, str]:
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    return _pins([line for line in lines if line and not line.startswith("#")], "==")


def _rule_files() -> list[Path]:
    return sorted((REPO / "rules").glob("*.smk"))


def test_every_rule_has_conda_log_and_an_existing_env() -> None:
    for smk in _rule_files():
        text = smk.read_text()
        blocks = re.split(r"^(?=(?:rule|checkpoint)\s+\w+:)", text, flags=re.M)[1:]
        for block in blocks:
            name = RULE.match(block).group(1)
            if name == "all":
                continue
            assert "log:" in block, f"{smk.name}: rule {name} has no log:"
            match = CONDA_DIRECTIVE.search(block)
            assert match, f"{smk.name}: rule {name} has no conda: directive"
            env = (smk.parent / match.group(1)).resolve()
            assert env.is_file(), f"{smk.name}: rule {name} points at missing env {env}"


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(env: Path) -> None:
    spec = yaml.safe_load(env.read_text())
    assert "nodefaults" in spec["channels"]
    requirements = _requirements()
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert any(d.startswith("python=3.11") for d in conda)
    for name, version in _pins(pip, "==").items():
        assert name in requirements, f"{env.name}: {name} is not pinned in requirements.txt"
        assert version == requirements[name], (
            f"{env.name}: {name}=={version}, requirements.txt has {requirements[name]}"
        )


def test_requirements_pin_what_the_brief_requires() -> None:
    requirements = _requirements()
    assert requirements["torch"] == "2.14.1" and requirements["torchvision"] == "0.29.1"
    assert requirements["snakemake"].startswith("9.")
    for name in (
        "snakemake-executor-plugin-slurm",
        "openslide-python",
        "openslide-bin",
        "opencv-python-headless",
        "open-clip-torch",
        "h5py",
        "pandas",
        "pyarrow",
        "scanpy",
        "requests",
        "tifffile",
        "imagecodecs",
        "scikit-learn",
        "lifelines",
        "tqdm",
        "matplotlib",
    ):
        assert re.fullmatch(r"\d+(\.\w+)+", requirements[name]), name
