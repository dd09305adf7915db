"""Tests of core/: the number checks, and that result_analysis and core load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.checks import check_bits, finite_number, value_text, whole_number

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), (3.0, 3), (np.int64(7), 7), (np.float32(2.0), 2), (10**400, 10**400),
])
def test_whole_number_returns_a_plain_int(value, expected):
    got = whole_number("n", value, minimum=0)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(("value", "bounds", "message"), [
    (0, {"minimum": 1}, "n must be a whole number >= 1, got 0"),
    (4.5, {"minimum": 0}, "n must be a whole number >= 0, got 4.5"),
    (2.5, {}, "n must be a whole number, got 2.5"),
    (True, {}, "n must be a whole number, got True"),
    ("3", {}, "n must be a whole number, got '3'"),
    (float("nan"), {}, "n must be a whole number, got nan"),
    (9, {"maximum": 8}, "n must be a whole number <= 8, got 9"),
    (np.int64(1), {"minimum": 2, "maximum": 8}, "n must be a whole number from 2 to 8, got 1"),
])
def test_whole_number_refuses_with_the_bounds_in_words(value, bounds, message):
    with pytest.raises(ValueError) as info:
        whole_number("n", value, **bounds)
    assert str(info.value) == message


@pytest.mark.parametrize(("value", "bounds", "message"), [
    (0, {"above": 0}, "x must be > 0, got 0"),
    (-0.5, {"minimum": 0}, "x must be >= 0, got -0.5"),
    (0, {"above": 0, "maximum": 1}, "x must be in (0, 1], got 0"),
    (1.5, {"above": 0, "maximum": 1}, "x must be in (0, 1], got 1.5"),
    (1, {"minimum": 0, "below": 1}, "x must be in [0, 1), got 1"),
    (2, {"below": 1}, "x must be < 1, got 2"),
    (float("inf"), {"above": 0}, "x must be a finite number, got inf"),
    (np.float64("nan"), {}, "x must be a finite number, got nan"),
    (10**400, {}, f"x must be a finite number, got {10**400}"),  # no float holds it
    (False, {}, "x must be a finite number, got False"),
    ("fast", {}, "x must be a finite number, got 'fast'"),
])
def test_finite_number_refuses_with_the_bounds_in_words(value, bounds, message):
    with pytest.raises(ValueError) as info:
        finite_number("x", value, **bounds)
    assert str(info.value) == message


def test_finite_number_returns_a_plain_float_and_keeps_bounds_it_includes():
    for value, bounds in [(1, {"above": 0, "maximum": 1}), (0, {"minimum": 0, "below": 1}), (np.float32(0.25), {})]:
        got = finite_number("x", value, **bounds)
        assert got == float(value) and type(got) is float


def test_check_bits_is_a_whole_number_from_2_to_8():
    assert [check_bits(b) for b in (2, 8.0, np.int8(5))] == [2, 8, 5]
    for bits in (1, 9, 2.5, True, "3"):
        with pytest.raises(ValueError, match="^bits must be a whole number from 2 to 8, got "):
            check_bits(bits)


def test_value_text_writes_numbers_as_written_and_the_rest_by_repr():
    assert [value_text(v) for v in (np.int64(3), 2.5, True, "3", None)] == ["3", "2.5", "True", "'3'", "None"]


def test_core_and_result_analysis_load_without_torch():
    """Building tables from CSV files must not load torch (nor the models, which need it)."""
    modules = ["core.atomic", "core.checks", "core.schema", "result_analysis.analysis", "result_analysis.compare_runs",
               "result_analysis.create_result_tables", "result_analysis.line_and_box_plot_cummulative",
               "result_analysis.plots"]
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'data', 'quantization')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ruff_passes_on_the_whole_repository():
    pytest.importorskip("ruff", reason="ruff is in requirements.txt: pip install -r requirements.txt")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


LAYERS = ("core", "data", "quantization", "models", "deployment", "protocol")  # each imports only those before it
ALLOWED = {**{package: set(LAYERS[:i]) for i, package in enumerate(LAYERS)}, "result_analysis": {"core"}}


def _project_imports(path: Path) -> set[str]:
    """The project's packages that a module imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & {*LAYERS, "result_analysis", "benchmarks"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package):
    """core <- data <- quantization <- models <- deployment <- protocol <- scripts; result_analysis uses core only."""
    wrong = {str(path.relative_to(REPO)): sorted(_project_imports(path) - ALLOWED[package] - {package})
             for path in sorted((REPO / package).glob("*.py"))}
    assert {path: packages for path, packages in wrong.items() if packages} == {}
