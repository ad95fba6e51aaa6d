"""Dependency direction: pipelines -> components -> model_lib, never back; model_lib stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_MODEL_LIB = {"kfp", "mlflow", "dvc", "great_expectations", "boto3", "botocore"}
SHADOWING_NAMES = {"mlflow.py", "kfp.py", "dvc.py"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("model_lib"), ids=str)
def test_model_lib_imports_no_mlops_stack(path: Path) -> None:
    bad = imported_roots(path) & (FORBIDDEN_IN_MODEL_LIB | {"components", "pipelines"})
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", python_files("components"), ids=str)
def test_components_do_not_import_pipelines(path: Path) -> None:
    assert "pipelines" not in imported_roots(path), f"{path.relative_to(ROOT)} imports pipelines"


def test_nothing_shadows_the_real_packages() -> None:
    assert not (ROOT / "mlflow" / "__init__.py").exists()
    shadows = [
        p for p in ROOT.rglob("*.py") if p.name in SHADOWING_NAMES and ".venv" not in p.parts
    ]
    assert not shadows, shadows


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom mlflow.tracking import MlflowClient\n")
    assert "mlflow" in imported_roots(module) & FORBIDDEN_IN_MODEL_LIB
