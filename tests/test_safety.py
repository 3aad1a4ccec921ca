"""Nothing the package loads can execute code: every call in its source is checked (issue 13 point 5)."""

from __future__ import annotations

import ast
from pathlib import Path

import precip_cvae

SOURCE = Path(precip_cvae.__file__).parent


def unsafe_calls(code: str) -> list[str]:
    """The calls of ``code`` that could run code from data: ``torch.load`` without ``weights_only=True``, YAML's
    unsafe loaders, ``pickle``/``marshal`` loads, ``allow_pickle=True``, ``shell=True``, ``eval``/``exec``."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        func = node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        where = f"line {node.lineno}: {ast.unparse(func)}"
        weights_only = keywords.get("weights_only")
        if (
            owner == "torch"
            and name == "load"
            and not (isinstance(weights_only, ast.Constant) and weights_only.value is True)
        ):
            found.append(where + " without weights_only=True")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
            found.append(where)
        if owner in ("pickle", "marshal", "dill") and name in ("load", "loads"):
            found.append(where)
        if isinstance(func, ast.Name) and name in ("eval", "exec"):
            found.append(where)
        for key in ("allow_pickle", "shell"):
            value = keywords.get(key)
            if isinstance(value, ast.Constant) and value.value is True:
                found.append(f"{where} with {key}=True")
    return found


def test_the_checker_finds_each_kind_of_unsafe_call():
    bad = """
import torch, yaml, pickle, subprocess, numpy as np
torch.load(p)
torch.load(p, weights_only=False)
yaml.load(text)
pickle.loads(blob)
np.load(p, allow_pickle=True)
subprocess.run(cmd, shell=True)
eval(text)
"""
    assert len(unsafe_calls(bad)) == 7
    good = "import torch, yaml\ntorch.load(p, weights_only=True)\nyaml.safe_load(text)\nmodel.eval()\n"
    assert unsafe_calls(good) == []


def test_no_source_file_of_the_package_loads_unsafely():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 40
    problems = {str(f.relative_to(SOURCE)): unsafe_calls(f.read_text()) for f in files}
    assert {f: p for f, p in problems.items() if p} == {}
