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


# Packages the envs take from pip: conda-forge has no conch-fork; its opencv stops at 4.11; harmonypy and
# torch-geometric are there under other names but not at our pinned versions (kept equal to requirements.txt).
PIP_ONLY = {"opencv-python-headless", "conch-fork", "harmonypy", "torch-geometric"}


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


# conda-forge name -> PyPI name, where they differ (checked on anaconda.org/conda-forge).
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib", "open-clip-torch": "open-clip-torch"}
# conda-only packages with no PyPI counterpart in requirements.txt: the OpenSlide C library (the venv
# gets it from openslide-bin), and the env's own python/pip.
CONDA_ONLY = {"python", "pip", "openslide"}


def _conda_pins(specs: list[str]) -> dict[str, str]:
    """conda match specs ``name=version`` / ``name==version`` -> {canonical name: version}."""
    pins = {}
    for spec in specs:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*={1,2}\s*([^\s=]+)", spec.strip())
        assert match, f"conda dependency {spec!r} has no exact pin (name=version)"
        pins[_canonical(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(env: Path) -> None:
    """Both the conda-forge and the pip dependencies of every env pin what requirements.txt pins."""
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    requirements = _requirements()
    conda = _conda_pins([d for d in spec["dependencies"] if isinstance(d, str)])
    pip = next((d["pip"] for d in spec["dependencies"] if isinstance(d, dict)), [])
    assert conda.get("python", "").startswith("3.11")
    if pip:
        assert "pip" in conda, f"{env.name}: pip dependencies need pip in the conda list"
    pinned = {
        CONDA_TO_PIP.get(name, name): (version, "conda") for name, version in conda.items() if name not in CONDA_ONLY
    }
    for name, version in _pins(pip, "==").items():
        assert name not in pinned, f"{env.name}: {name} comes from both conda and pip"
        pinned[name] = (version, "pip")
    for name, (version, source) in pinned.items():
        assert name in requirements, f"{env.name}: {name} ({source}) is not pinned in requirements.txt"
        assert version == requirements[name], (
            f"{env.name}: {name}={version} ({source}), requirements.txt has {requirements[name]}"
        )
    extra = sorted(set(_pins(pip, "==")) - PIP_ONLY)
    assert not extra, f"{env.name}: conda-forge first; pip only for {sorted(PIP_ONLY)}, not {extra}"


def test_envs_cover_what_their_rules_import() -> None:
    """The slide-reading envs carry OpenSlide (C library and binding); the torch env the model stack."""
    tissue = _conda_pins(
        [d for d in yaml.safe_load((REPO / "envs/tissue.yaml").read_text())["dependencies"] if isinstance(d, str)]
    )
    torch_env = _conda_pins(
        [d for d in yaml.safe_load((REPO / "envs/torch.yaml").read_text())["dependencies"] if isinstance(d, str)]
    )
    assert {"openslide", "openslide-python", "h5py", "tifffile"} <= set(tissue)
    assert {"pytorch", "torchvision", "open-clip-torch", "openslide", "scikit-learn", "lifelines"} <= set(torch_env)


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
