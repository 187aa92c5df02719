"""The shared contract and the serving install's boundaries: what service/ may import.

The serving install (the ``serve`` extra, the serving image) has no torch, no pyarrow and no
tqdm, and carries contract/ and service/ only. These tests prove it two ways: statically, by
reading every import of the source files, and for real, by importing the service in a fresh
interpreter that refuses the missing modules (a ``sys.meta_path`` finder), so that an import
hidden behind another module, or made lazily at start-up, fails here and not in production.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent

#: Not in a serving install: training and export code, and what only they and the bulk load need.
NOT_SERVING = ("torch", "model", "export", "pyarrow", "tqdm")
#: The two service modules that read parquet, for ``python -m service.features load`` only.
LOAD_MODULES = {"service.features.loader", "service.features.source"}
#: The only modules of the project's packages that may import pyarrow: the one dataset validator
#: and the synthetic data generator that writes datasets.
PYARROW_IMPORTERS = {"contract/dataset.py", "model/synth.py"}

#: Prepended to every subprocess: refuse ``sys.argv[1]``'s comma-separated top-level modules, as
#: if they were not installed, and import this checkout's code (not an installed copy).
BLOCKER = f"""
import importlib.abc, sys
BLOCKED = frozenset(sys.argv.pop(1).split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            message = f"No module named {{name!r}} (refused by the test)"
            raise ModuleNotFoundError(message, name=name)
        return None
early = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
assert not early, f"imported before the blocker: {{early}}"
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(ROOT)!r})
"""


def run_blocked(
    blocked: tuple[str, ...], code: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, ",".join(blocked), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------------------------
# Static: every import statement of the source files


def imported_modules(path: Path) -> set[str]:
    """Absolute modules a file imports anywhere (top level, functions, TYPE_CHECKING blocks),
    including ``importlib.import_module("...")`` and ``__import__("...")`` with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in {"import_module", "__import__"} and isinstance(first, ast.Constant):
                found.add(str(first.value))
    return found


def top_levels(path: Path) -> set[str]:
    return {module.partition(".")[0] for module in imported_modules(path)}


def test_the_import_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The positive control of the static checks below."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n"
        "    from model.data import Dataset\n"
        "def late():\n"
        "    import export.graphs\n"
        "    from . import sibling\n"
        "    return importlib.import_module('torch.nn'), __import__('pyarrow')\n"
    )
    assert top_levels(source) == {"typing", "importlib", "model", "export", "torch", "pyarrow"}


def test_nothing_under_service_imports_training_or_export_code() -> None:
    files = sorted((ROOT / "service").rglob("*.py"))
    assert len(files) > 20
    offenders = {
        str(path.relative_to(ROOT)): sorted(top_levels(path) & {"model", "export", "torch"})
        for path in files
    }
    assert {path: bad for path, bad in offenders.items() if bad} == {}


def test_only_the_dataset_validator_and_the_generator_import_pyarrow() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ("contract", "model", "export", "service")
        for path in (ROOT / package).rglob("*.py")
        if "pyarrow" in top_levels(path)
    }
    assert importers == PYARROW_IMPORTERS


def test_the_contract_imports_no_project_package_but_itself() -> None:
    for path in (ROOT / "contract").glob("*.py"):
        project = top_levels(path) & {"model", "export", "service", "bench", "tests", "torch"}
        assert not project, f"{path.name} imports {sorted(project)}"


def test_the_serve_extra_carries_only_what_serving_imports() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def names(extra: str) -> set[str]:
        return {spec.split("[")[0].split(">")[0].split("=")[0].strip() for spec in extras[extra]}

    assert not names("serve") & {"torch", "pyarrow", "tqdm"}
    assert {"pyarrow", "tqdm"} <= names("load")
    assert {"pyarrow", "tqdm"} <= names("train")  # training reads parquet too


# ------------------------------------------------------------------------------------------------
# For real: a fresh interpreter without torch, pyarrow, tqdm, model/ and export/


def test_the_service_imports_and_builds_its_app_without_them() -> None:
    code = f"""
import json, pkgutil, importlib
import service
names = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service."))
imported, refused = [], {{}}
for name in ["service", *names]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        refused[name] = exc.name
    else:
        assert module.__file__.startswith({str(ROOT)!r}), module.__file__
        imported.append(name)
from service.api import create_app
from service.settings import Settings
app = create_app(Settings())  # no Redis and no model needed until start-up
schema = app.openapi()
print(json.dumps({{"imported": imported, "refused": refused, "paths": sorted(schema["paths"])}}))
"""
    done = run_blocked(NOT_SERVING, code)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # The bulk loader alone needs the load extra; the finder refused exactly its modules.
    assert set(result["refused"]) == LOAD_MODULES
    assert set(result["refused"].values()) <= {"pyarrow", "tqdm"}
    expected = {"service.api", "service.__main__", "service.runtime", "service.engine"}
    expected |= {"service.features", "service.features.__main__", "service.schemas"}
    assert expected <= set(result["imported"])
    assert "/score" in result["paths"] and "/readyz" in result["paths"]


def test_the_blocker_refuses_what_it_is_told_to() -> None:
    """The positive control: with pyarrow refused, the bulk loader does fail to import."""
    done = run_blocked(("pyarrow",), "import service.features.loader")
    assert done.returncode == 1
    assert "No module named 'pyarrow' (refused by the test)" in done.stderr


def test_the_contract_schema_and_onnx_io_import_without_third_party_packages() -> None:
    code = """
import contract.schema, contract.onnx_io
assert contract.schema.LEVEL_MAX == contract.schema.LEVEL_VOCAB - 1 == 10
assert contract.onnx_io.serving_inputs(5, 128)[0].name == "history_ids"
"""
    done = run_blocked((*NOT_SERVING, "numpy", "service", "redis"), code)
    assert done.returncode == 0, done.stderr


def test_the_load_command_without_pyarrow_names_the_load_extra(tmp_path: Path) -> None:
    code = "import runpy; runpy.run_module('service.features', run_name='__main__', alter_sys=True)"
    for blocked in ("pyarrow", "tqdm"):
        done = run_blocked((blocked,), code, "load", "--data", str(tmp_path), "--no-progress")
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert done.stderr == (
            f"error: the load command needs the `load` extra ({blocked} is not installed): "
            "pip install '.[load]'\n"
        )


def test_append_and_info_work_without_the_load_extra(
    redis_server: RedisServer, tiny_data: Path
) -> None:
    from service.features.__main__ import main  # the load itself needs pyarrow: run it here

    url = redis_server.url
    assert main(["load", "--data", str(tiny_data), "--redis-url", url, "--no-progress"]) == 0
    code = "import runpy; runpy.run_module('service.features', run_name='__main__', alter_sys=True)"
    blocked = ("pyarrow", "tqdm", "torch", "model", "export")
    append = run_blocked(blocked, code, "append", "--redis-url", url, "--user", "5", "--item", "3")
    assert append.returncode == 0, append.stderr
    assert "user 5: 1 appended under version 1" in append.stdout
    info = run_blocked(blocked, code, "info", "--redis-url", url)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["live"] == "1"


def test_the_old_homes_of_the_contract_are_gone() -> None:
    """No re-export shims: model.schema and export.contract no longer exist."""
    assert (ROOT / "contract" / "schema.py").is_file()
    assert (ROOT / "contract" / "onnx_io.py").is_file()
    assert not (ROOT / "model" / "schema.py").exists()
    assert not (ROOT / "export" / "contract.py").exists()
