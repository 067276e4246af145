"""Rules of the code's layout that no type checker sees, checked on its syntax trees.

- The contracts are spelled once, in the core: outside core/, no string literal is an
  artifact file name, an output name, a path ending in a file name, or a hand-built
  ``data.<format>`` name; the code uses ``kubeloop.contracts.artifacts`` instead.
- Every setting is read: each field of a pydantic-settings class is read as an attribute
  somewhere outside the class, so no setting is accepted and then ignored.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kubeloop.contracts.artifacts import OUTPUT_NAMES, ArtifactLayout

ROOT = Path(__file__).resolve().parents[2]
#: The folders outside the core: components and the local-cluster tooling.
OUTSIDE_CORE = ("operator", "serving", "trainer", "devcluster")
CODE = ("core", *OUTSIDE_CORE)
FILE_NAMES = frozenset(
    value for key, value in vars(ArtifactLayout).items() if key.isupper() and isinstance(value, str)
)
OUTPUTS = frozenset(name for names in OUTPUT_NAMES.values() for name in names)
DATA_PREFIX = ArtifactLayout.data_file("")
#: Literals that spell a contract name but mean something else, with why.
NOT_CONTRACTS = {
    ("serving/kubeloop/serving/rest/v1.py", "probabilities"): (
        "the KServe V1 answer's field name, a public API that must not follow a renamed output"
    ),
    **{
        ("trainer/kubeloop/trainer/frameworks/base.py", name): (
            "the output names skl2onnx emits, mapped to the contract's (equal today by chance)"
        )
        for name in ("label", "probabilities", "variable")
    },
}


@cache
def trees(folders: tuple[str, ...]) -> dict[Path, ast.Module]:
    """The parsed ``.py`` files under ``folders`` (relative to the repository)."""
    return {
        path.relative_to(ROOT): ast.parse(path.read_text(), str(path))
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring constants of the module, its classes and functions."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, owners) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def is_contract_name(text: str) -> bool:
    """An artifact file or output name, a path ending in a file name, or ``data.<format>``."""
    return (
        text in FILE_NAMES
        or text in OUTPUTS
        or any(text.endswith(f"/{name}") for name in FILE_NAMES)
        or text.startswith(DATA_PREFIX)
    )


def contract_literals(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of each string constant, f-string parts included, that spells a contract."""
    skip = docstrings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and is_contract_name(node.value)
        ):
            yield node.lineno, node.value


def contract_violations(sources: dict[Path, ast.Module]) -> Iterator[str]:
    for path, tree in sources.items():
        for line, text in contract_literals(tree):
            if (str(path), text) not in NOT_CONTRACTS:
                yield f"{path}:{line}: {text!r}"


def test_the_contract_names_come_from_the_core():
    assert {"model.onnx", "model.json", "profile.json", "card.md"} == FILE_NAMES
    assert {"label", "probabilities", "variable"} == OUTPUTS
    assert DATA_PREFIX == "data."
    found = list(contract_violations(trees(OUTSIDE_CORE)))
    assert found == [], "use kubeloop.contracts.artifacts:\n" + "\n".join(found)


def test_every_exemption_from_the_contract_check_is_still_needed():
    sources = trees(OUTSIDE_CORE)
    for path, text in NOT_CONTRACTS:
        spelled = {value for _, value in contract_literals(sources[Path(path)])}
        assert text in spelled, f"{path} no longer spells {text!r}: drop its exemption"


def test_the_contract_check_sees_fstring_parts_and_skips_docstrings():
    tree = ast.parse(
        '"""model.onnx"""\n'
        'def f(root, fmt):\n    """label"""\n'
        '    return [f"{root}/model.json", f"data.{fmt}", "probabilities", "a label"]\n'
    )
    assert sorted(text for _, text in contract_literals(tree)) == [
        "/model.json",
        "data.",
        "probabilities",
    ]


@dataclass(frozen=True)
class SettingsClass:
    path: Path
    node: ast.ClassDef

    def fields(self) -> list[str]:
        """The annotated fields of the class body (``model_config`` is configuration)."""
        return [
            statement.target.id
            for statement in self.node.body
            if isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.target.id != "model_config"
            and "ClassVar" not in ast.unparse(statement.annotation)
        ]


def base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}


def settings_classes(sources: dict[Path, ast.Module]) -> list[SettingsClass]:
    """Subclasses of pydantic-settings' ``BaseSettings``, also through one of ours."""
    classes = [
        SettingsClass(path, node)
        for path, tree in sources.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]
    names = {"BaseSettings"}
    found: list[SettingsClass] = []
    while grown := [c for c in classes if c not in found and base_names(c.node) & names]:
        found += grown
        names |= {c.node.name for c in grown}
    return found


def attributes_read(sources: dict[Path, ast.Module], outside: ast.ClassDef) -> set[str]:
    """Names read as ``x.name`` anywhere in ``sources`` but in the body of ``outside``."""
    inside = {id(node) for node in ast.walk(outside)}
    return {
        node.attr
        for tree in sources.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Load)
        and id(node) not in inside
    }


def unread_settings(sources: dict[Path, ast.Module], classes: list[SettingsClass]) -> Iterator[str]:
    for settings in classes:
        read = attributes_read(sources, settings.node)
        for field in settings.fields():
            if field not in read:
                yield f"{settings.path}: {settings.node.name}.{field}"


def test_every_setting_is_read():
    sources = trees(CODE)
    classes = settings_classes(sources)
    assert {c.node.name for c in classes} >= {"OperatorSettings", "ServingSettings"}
    unread = list(unread_settings(sources, classes))
    assert unread == [], "settings nothing reads (remove them or use them):\n" + "\n".join(unread)


def test_the_settings_check_finds_an_unread_field():
    source = """
class Base(BaseSettings):
    used: int = 1
    unused: int = 2

    def own(self):
        return self.unused

class More(Base):
    extra: str = ""

def main(s):
    return s.used + len(s.extra)
"""
    tree = ast.parse(source)
    sources = {Path("m.py"): tree}
    classes = settings_classes(sources)
    assert [c.node.name for c in classes] == ["Base", "More"]
    assert classes[0].fields() == ["used", "unused"]
    assert list(unread_settings(sources, classes)) == ["m.py: Base.unused"]
