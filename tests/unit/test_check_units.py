"""hack/check_units.py: how it counts a function's lines and which functions it exempts."""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "check_units.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_units", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


units = _load()


def function(source: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    node = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    return node


def body_lines(count: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(count))


def test_length_counts_def_line_to_last_line_without_decorators():
    source = "@decorator\n@another(1)\ndef f(\n    a,\n    b,\n):\n" + body_lines(3)
    assert units.length(function(source)) == 7


def test_async_functions_count_too():
    assert units.length(function("async def f():\n" + body_lines(2))) == 3


@pytest.mark.parametrize(("body", "flagged"), [(59, False), (60, True)])
def test_limit_is_sixty_lines(body, flagged, tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n" + body_lines(body))
    assert [u.name for u in units.check([path])] == (["f"] if flagged else [])


def test_nested_functions_are_checked_on_their_own(tmp_path):
    inner = "    def inner():\n" + textwrap.indent(body_lines(65), "    ")
    path = tmp_path / "m.py"
    path.write_text("def outer():\n" + inner + "    return inner\n")
    found = units.check([path])
    assert [(u.name, u.line, u.length) for u in found] == [("outer", 1, 68), ("inner", 2, 66)]
    assert str(found[0]) == f"{path}:1: outer is 68 lines (at most 60)"


def literal_function(literal: str, docstring: bool = True) -> str:
    doc = '    """A table."""\n' if docstring else ""
    return f"def table():\n{doc}    return {literal}\n"


@pytest.mark.parametrize(
    "literal",
    [
        '{\n        "a": 1,\n        "b": (2, -3.5, None),\n    }',
        '[\n        "x",\n        ["y", {"z": True}],\n    ]',
        "(\n        1,\n        +2,\n    )",
        '{\n        b"a",\n        "b",\n    }',
    ],
)
def test_a_function_returning_a_literal_table_is_exempt(literal):
    assert units.returns_literal_table(function(literal_function(literal)))
    assert units.returns_literal_table(function(literal_function(literal, docstring=False)))


@pytest.mark.parametrize(
    "source",
    [
        literal_function('{"a": NAME}'),  # a name is no constant
        literal_function('{"a": f(1)}'),
        literal_function('[f"{x}"]'),
        literal_function('{**base, "a": 1}'),  # a dict unpacking has no key
        literal_function("[i for i in range(3)]"),
        literal_function("1"),  # a constant, not a table
        "def f():\n    x = 1\n    return [x]\n",
        "def f():\n    return\n",
        'def f():\n    """Only a docstring."""\n',
    ],
)
def test_anything_else_is_not_exempt(source):
    assert not units.returns_literal_table(function(source))


def test_a_long_literal_table_passes_and_a_long_function_fails(tmp_path):
    items = "".join(f'        "k{i}": {i},\n' for i in range(70))
    (tmp_path / "table.py").write_text(f"def table():\n    return {{\n{items}    }}\n")
    (tmp_path / "long.py").write_text("def long():\n" + body_lines(61))
    hidden = tmp_path / ".venv"
    hidden.mkdir()
    (hidden / "skipped.py").write_text("def skipped():\n" + body_lines(61))
    assert [(u.path.name, u.name) for u in units.check([tmp_path])] == [("long.py", "long")]


def test_main_exits_1_naming_each_long_function(tmp_path, capsys):
    (tmp_path / "ok.py").write_text("def ok():\n    return 1\n")
    assert units.main([str(tmp_path)]) == 0
    (tmp_path / "long.py").write_text("def long():\n" + body_lines(61))
    assert units.main([str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'long.py'}:1: long is 62 lines (at most 60)\n"
    assert "1 functions over 60 lines" in err
