"""The pure layers never import Lightning (DESIGN.md house rule)."""

from __future__ import annotations

import subprocess
import sys

PURE = ["models", "diffusion", "methods", "codecs", "metrics", "inference"]


def test_pure_layers_import_without_lightning():
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'pytorch_lightning'):\n"
        "            raise ImportError('lightning is blocked in this test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pkgutil, importlib, omniforcing\n"
        f"for pkg in {PURE!r}:\n"
        "    mod = importlib.import_module('omniforcing.' + pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
