"""The packages depend one way: ``ripple`` (command line, collector, web, tools) on
``sinks`` (ClickHouse) on ``streams`` (the worker and everything shared). A module that
imports upwards makes the layers one knot again; each package is imported in a fresh
interpreter and what it loaded is checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
for info in pkgutil.walk_packages(package.__path__, {package!r} + "."):
    importlib.import_module(info.name)
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


@pytest.mark.parametrize(("package", "above"), [("streams", {"ripple", "sinks"}), ("sinks", {"ripple"})])
def test_a_package_imports_nothing_from_the_layers_above_it(package: str, above: set[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(package=package)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert package in loaded
    assert not loaded & above, f"{package} loads {sorted(loaded & above)}"
