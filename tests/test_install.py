"""The package's declared dependencies (pyproject.toml) against what the code imports, and its console commands."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from vlpeft import cli

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCAL = {"vlpeft", "write_arrow", "run", "run_search", "run_train", "tests", "helpers", "task_axis_scan", "toy_task", "fixtures", "fixtures_raw",
         "conftest"}
# Declared but never imported by name, each needed by a library we call:
INDIRECT = {
    "setuptools": "upper bound only: sacred 0.8.7 imports pkg_resources, gone in setuptools 82",
    "tensorboard": "Lightning's TensorBoardLogger (the default logger) needs it",
    "gguf": "transformers reads GGUF files (plm_gguf_file=) with it",
    "accelerate": "transformers refuses a GGUF load without it",
}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _imports(files) -> set[str]:
    mods = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in LOCAL and m != "__future__"}


def _dists(mods: set[str]) -> dict[str, str]:
    where = packages_distributions()
    missing = sorted(m for m in mods if m not in where)
    assert not missing, f"imported but installed by no distribution: {missing}"
    return {m: where[m][0].lower().replace("_", "-") for m in mods}


def _package_files():
    return [*ROOT.joinpath("vlpeft").rglob("*.py"), *ROOT.joinpath("write_arrow").rglob("*.py"),
            *(ROOT / n for n in ("run.py", "run_search.py", "run_train.py"))]


def test_every_import_of_the_package_is_declared_and_every_declared_one_is_used():
    extras = PROJECT["optional-dependencies"]
    declared = {_name(r) for r in PROJECT["dependencies"]}
    for name, reqs in extras.items():
        if name not in ("test", "all"):
            declared |= {_name(r) for r in reqs}
    used = set(_dists(_imports(_package_files())).values())
    assert used - declared == set(), f"imported, not declared: {sorted(used - declared)}"
    assert declared - used - set(INDIRECT) == set(), f"declared, never imported: {sorted(declared - used)}"
    # the test oracles are for the tests alone: not required by a plain install
    test_only = {_name(r) for r in extras["test"]}
    assert test_only == {"pytest", "peft"}
    assert test_only <= set(_dists(_imports(ROOT.joinpath("tests").rglob("*.py"))).values())
    assert not test_only & {_name(r) for r in PROJECT["dependencies"]}


def test_no_exact_pin_in_what_the_package_requires():
    reqs = PROJECT["dependencies"] + [r for v in PROJECT["optional-dependencies"].values() for r in v]
    assert [r for r in reqs if "==" in r] == []
    # never admit torch 2.13 (its CPU wheel breaks every PyPI torchvision)
    assert "torch>=2.14" in PROJECT["dependencies"] and "torchvision>=0.29" in PROJECT["dependencies"]


def test_the_pinned_environment_pins_every_declared_dependency_within_its_range():
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not an exact pin"
            pins[_name(name)] = version.strip()
    reqs = PROJECT["dependencies"] + [r for k, v in PROJECT["optional-dependencies"].items() if k != "all" for r in v]
    for r in map(Requirement, reqs):
        name = _name(r.name)
        assert name in pins, f"requirements.txt does not pin {name}"
        assert r.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {r.specifier}"


def test_console_commands_are_declared_and_dispatch(capsys):
    assert PROJECT["scripts"] == {"vlpeft": "vlpeft.cli:main", "vlpeft-run": "vlpeft.cli:run"}
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    for cmd in ("evaluate", "report", "export", "convert", "write-arrow"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_vlpeft_run_is_run_py(tmp_path):
    # the same sacred command line: `print_config` shows the config run.py would run with
    code = "import sys; from vlpeft.cli import run; sys.argv = ['vlpeft-run', 'print_config', 'with', 'seed=7']; run()"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"\bseed = 7\b", out.stdout)
