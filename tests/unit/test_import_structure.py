"""The claims docs/architecture.md makes about the code's shape, checked on the source (with
``ast``, so imports inside functions and under ``TYPE_CHECKING`` count as much as any other):
handlers/ never imports Ray, imports only point down the layers, and there is no import cycle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("handlers", "deployments", "raytorch")
# Lowest first; a part may import only parts of a lower rank (the same rank: neither imports
# the other). The order docs/architecture.md gives.
RANKS = {
    "handlers": 0,
    "deployments.common": 1,
    "deployments.protos": 1,
    "deployments.model": 2,
    "deployments.pool": 3,
    "deployments.management": 4,
    "deployments.inference": 4,
    "deployments.workflow": 5,  # calls models the way the ingress does (its router)
    "deployments": 6,  # app.py: the builders the configs name
    "raytorch": 7,
}


def modules() -> dict[str, Path]:
    """Every module of ours by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module, line) of every import in the module, wherever it is (functions, TYPE_CHECKING)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno


def graph() -> dict[str, dict[str, int]]:
    """Our modules -> the modules of ours they import (with a line number)."""
    known = modules()
    edges: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, path in known.items():
        for target, line in imported(name, path, known):
            while target and target not in known:  # `from package import name`: the package
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].setdefault(target, line)
    return edges


def part(module: str) -> str:
    pieces = module.split(".")
    if pieces[0] == "deployments" and len(pieces) > 1 and f"deployments.{pieces[1]}" in RANKS:
        return f"deployments.{pieces[1]}"
    return pieces[0]


def test_handlers_never_import_ray() -> None:
    known = modules()
    found = [
        f"{name}:{line} imports {target}"
        for name, path in known.items()
        if part(name) == "handlers"
        for target, line in imported(name, path, known)
        if target == "ray" or target.startswith("ray.")
    ]
    assert found == []


def test_imports_only_point_down_the_layers() -> None:
    wrong = [
        f"{source} ({part(source)}) imports {target} ({part(target)}), line {line}"
        for source, targets in graph().items()
        for target, line in targets.items()
        if part(source) != part(target) and RANKS[part(target)] >= RANKS[part(source)]
    ]
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    # Tarjan's strongly connected components: a component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_checks_see_what_they_claim_to() -> None:
    # A check that found no imports at all would pass on anything.
    edges = graph()
    assert "deployments.common.model_table" in edges["deployments.inference.router"]
    assert "deployments.model.builder" in edges["deployments.management.serve_control"]  # in a function
    assert (
        "deployments.inference.workflow_calls" in edges["deployments.inference.http_entry"]
    )  # TYPE_CHECKING
    assert (
        part("deployments.management.manager") == "deployments.management"
        and part("deployments.app") == "deployments"
    )


def test_every_file_the_architecture_names_exists_and_each_path_has_at_most_8_steps() -> None:
    import re

    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w/]+\.py)`", doc))
    ours = {
        str(path.relative_to(ROOT))
        for package in (*PACKAGES, "tests")
        for path in (ROOT / package).rglob("*.py")
    }
    # A path names a file from the repository root, from deployments/, or (a bare name, in the
    # paragraph of its part) from any of our folders.
    missing = [
        name
        for name in sorted(named)
        if not {name, f"deployments/{name}"} & ours and not any(path.endswith(f"/{name}") for path in ours)
    ]
    assert len(named) > 30 and missing == []
    sections = re.split(r"^## ", doc, flags=re.MULTILINE)
    paths = {s.splitlines()[0]: s for s in sections if s.splitlines()[0].endswith("file by file")}
    assert set(paths) == {
        "One prediction, file by file",
        "One registration, file by file",
        "One unregistration, file by file",
    }
    for title, text in paths.items():
        steps = re.findall(r"^(\d+)\. ", text, flags=re.MULTILINE)
        assert 1 <= len(steps) <= 8, f"{title}: {len(steps)} steps"


RAY_ADAPTER = "deployments.common.ray_private"
_PRIVATE_RAY_PATH = re.compile(r"ray(\.\w+)*\._\w+(\.\w+)*")


def private_ray_uses(path: Path) -> Iterator[str]:
    """What a module uses of Ray's private API: private modules or symbols it imports, private
    attributes of a Ray module it names, private keywords it passes, private module paths it
    spells out as text."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    ray_names = set()  # local names bound to Ray modules or objects
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            ray_names |= {
                (a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "ray"
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            ray_names |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            base = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                if full.split(".")[0] == "ray" and _PRIVATE_RAY_PATH.fullmatch(full):
                    yield f"line {node.lineno}: imports {full}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ray_names
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            yield f"line {node.lineno}: {node.value.id}.{node.attr}"
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            yield f"line {node.value.lineno}: keyword {node.arg}="
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _PRIVATE_RAY_PATH.fullmatch(node.value)
        ):
            yield f"line {node.lineno}: names {node.value!r}"


def test_only_the_adapter_uses_private_ray_apis() -> None:
    known = modules()
    found = [
        f"{name} {use}"
        for name, path in sorted(known.items())
        if name != RAY_ADAPTER
        for use in private_ray_uses(path)
    ]
    assert found == []


def test_the_private_ray_check_sees_the_adapters_uses() -> None:
    # Run on the adapter itself, the check must find each kind of use it looks for.
    known = modules()
    uses = "\n".join(private_ray_uses(known[RAY_ADAPTER]))
    assert "imports ray.serve._private.api.serve_start" in uses
    assert "imports ray._raylet.AuthenticationTokenLoader" in uses
    assert "imports ray.serve.context._get_global_client" in uses
    assert "context._set_request_context" in uses
    assert "keyword _blocking=" in uses
    assert "names 'ray.serve._private.replica'" in uses
