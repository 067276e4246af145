#!/usr/bin/env python3
"""Fail on Python functions longer than 60 lines, counted from the def line to the last line.

A long function does several jobs; split it into units with one job each. The one
exemption is a function whose body (after an optional docstring) is a single ``return`` of
a literal table, a dict, list, tuple or set of constants: data, however long.

    hack/check_units.py [PATH ...]    (default: the code, test and benchmark folders)

Prints one line per function over the limit and exits 1 when there is any (`make lint`).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LIMIT = 60
ROOTS = ("core", "operator", "serving", "trainer", "devcluster", "tests", "bench")
SKIPPED = {"__pycache__", "node_modules", "build"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class LongUnit:
    """A function over the limit."""

    path: Path
    line: int
    name: str
    length: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name} is {self.length} lines (at most {LIMIT})"


def length(function: Function) -> int:
    """Lines from the ``def`` line (decorators not counted) to the last line, inclusive."""
    return (function.end_lineno or function.lineno) - function.lineno + 1


def is_constant(node: ast.expr) -> bool:
    """A constant, a signed number, or a literal table of constants."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return is_constant(node.operand)
    return is_literal_table(node)


def is_literal_table(node: ast.expr) -> bool:
    """A dict, list, tuple or set literal whose keys and items are all constants."""
    if isinstance(node, ast.Dict):
        keys_constant = all(key is not None and is_constant(key) for key in node.keys)
        return keys_constant and all(is_constant(value) for value in node.values)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return all(is_constant(item) for item in node.elts)
    return False


def returns_literal_table(function: Function) -> bool:
    """The body, after an optional docstring, is one ``return`` of a literal table."""
    body = function.body
    if ast.get_docstring(function, clean=False) is not None:
        body = body[1:]
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return False
    value = body[0].value
    return value is not None and is_literal_table(value)


def long_units(tree: ast.AST, path: Path) -> Iterator[LongUnit]:
    """Every function of ``tree`` (nested ones too) over the limit and not exempt."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = length(node)
            if size > LIMIT and not returns_literal_table(node):
                yield LongUnit(path, node.lineno, node.name, size)


def python_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The ``.py`` files of ``paths`` (files, or folders searched below, hidden ones skipped)."""
    for path in paths:
        if path.is_file():
            yield path
            continue
        for found in sorted(path.rglob("*.py")):
            parts = found.relative_to(path).parts
            if not any(part.startswith(".") or part in SKIPPED for part in parts):
                yield found


def check(paths: Iterable[Path]) -> list[LongUnit]:
    found: list[LongUnit] = []
    for path in python_files(paths):
        found.extend(long_units(ast.parse(path.read_text(), str(path)), path))
    return sorted(found, key=lambda unit: (str(unit.path), unit.line))


def main(argv: Sequence[str]) -> int:
    paths = [Path(arg) for arg in argv] or [Path(root) for root in ROOTS if Path(root).exists()]
    found = check(paths)
    for unit in found:
        print(unit)
    if found:
        print(f"{len(found)} functions over {LIMIT} lines: split them", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
