"""Imports point one way: each room of llmgw imports only the rooms below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

LLMGW = Path(__file__).resolve().parents[2] / "llmgw"

# Top to bottom. A room may import any room on a lower line, none on its own line or above.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"server", "ps"},
    {"proxy"},
    {"peers"},
    {"scheduling"},
    {"agent"},  # python -m llmgw agent: none of the gateway's request path, scheduling or server
    {"runtime"},
    {"slotcache"},
    {"keys"},
    {"upstream", "api"},
    {"config", "state", "events", "demo", "modelfile", "listen"},
    {"errors"},
]
LEVEL = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def room_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def imports(path: Path) -> set[str]:
    """The llmgw rooms ``path`` imports (type-checking imports too: they are a dependency all the same)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmgw."):
            found.add(room_of(node.module))
        elif isinstance(node, ast.Import):
            found.update(room_of(alias.name) for alias in node.names if alias.name.startswith("llmgw."))
    return found


def test_every_room_is_placed() -> None:
    rooms = {
        path.stem if path.is_file() else path.name
        for path in LLMGW.iterdir()
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert rooms - {"__init__"} <= set(LEVEL), f"rooms missing from LAYERS: {rooms - {'__init__'} - set(LEVEL)}"


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(LLMGW.rglob("*.py")):
        parts = path.relative_to(LLMGW).parts
        room = parts[0].removesuffix(".py")
        if room == "__init__":
            continue
        for target in imports(path) - {room}:
            if LEVEL[target] <= LEVEL[room]:
                wrong.append(f"{path.relative_to(LLMGW.parent)} imports llmgw.{target}")
    assert wrong == []
