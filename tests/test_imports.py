"""The import rule of docs/architecture.md, read from the code's own imports (``ast``, nothing is imported).

Every module of ``monai_qrvae`` belongs to one *room*: its top-level package or module (``workflows``,
``utils``...). Rooms stand on floors; a room may import its own floor and the floors below, never above, no room
imports a private name (``_x``) of another room, and the rooms import each other without a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_qrvae"

#: the floors of docs/architecture.md, from the ground up (keep the two in step).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("utils", "defaults", "numerics", "threads", "logging_utils", "context", "tables", "version"),
    ("anomaly", "losses", "networks", "baselines", "metrics", "report", "calibration"),
    ("transforms", "preprocessing", "handlers", "engines", "evaluation", "data", "io"),
    ("workflows",),
    ("study", "experiments", "raw", "bundle_inputs"),
    ("cli", "__init__"),
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _room(module: str) -> str:
    """``monai_qrvae.workflows.pipeline`` -> ``workflows``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> list[tuple[str, str, tuple[str, ...], int]]:
    """``(importer module, imported module, names, line)`` for every import of ``monai_qrvae`` in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_of(path)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(module, a.name, (), node.lineno) for a in node.names if a.name.startswith("monai_qrvae")]
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:  # relative: from the importer's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                if not target.startswith("monai_qrvae"):
                    continue
                names = []
                for alias in node.names:  # "from package import submodule" imports the submodule
                    sub = PACKAGE.parent.joinpath(*target.split("."), alias.name)
                    if sub.is_dir() or sub.with_suffix(".py").is_file():
                        found.append((module, f"{target}.{alias.name}", (), node.lineno))
                    else:
                        names.append(alias.name)
                if names or not node.names:
                    found.append((module, target, tuple(names), node.lineno))
    return found


def test_the_rule_names_every_room():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    rooms = {r for r in rooms if r != "__pycache__"}
    assert rooms == set(
        FLOOR
    ), f"rooms without a floor: {sorted(rooms - set(FLOOR))}; gone: {sorted(set(FLOOR) - rooms)}"


def test_every_imported_module_exists():
    def exists(module: str) -> bool:
        path = PACKAGE.parent.joinpath(*module.split("."))
        return path.is_dir() or path.with_suffix(".py").is_file()

    missing = [f"{src}:{line} imports {dst}" for src, dst, _, line in _imports() if not exists(dst)]
    assert not missing, "\n".join(missing)


def test_no_import_runs_up_a_floor():
    up = [
        f"{src} (floor {FLOOR[_room(src)]}) imports {dst} (floor {FLOOR[_room(dst)]}), line {line}"
        for src, dst, _, line in _imports()
        if FLOOR[_room(dst)] > FLOOR[_room(src)]
    ]
    assert not up, "\n".join(up)


def test_no_private_name_crosses_rooms():
    private = [
        f"{src}:{line} takes {name} from {dst}"
        for src, dst, names, line in _imports()
        for name in names
        if name.startswith("_") and not name.endswith("__") and _room(src) != _room(dst)
    ]
    assert not private, "\n".join(private)


def test_rooms_import_each_other_without_a_circle():
    edges: dict[str, set[str]] = {}
    for src, dst, _, _ in _imports():
        if _room(src) != _room(dst) and _room(src) != "__init__":
            edges.setdefault(_room(src), set()).add(_room(dst))
    done: set[str] = set()

    def visit(room: str, path: tuple[str, ...]) -> None:
        assert room not in path, "circle: " + " -> ".join([*path[path.index(room) :], room])
        if room in done:
            return
        for nxt in sorted(edges.get(room, ())):
            visit(nxt, (*path, room))
        done.add(room)

    for room in sorted(edges):
        visit(room, ())
