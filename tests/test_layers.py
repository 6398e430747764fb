"""The layers of sonate import one way only, and the light commands stay light.

Every import of every module counts: top-level, lazy (inside a function), under `if TYPE_CHECKING:`, absolute
and relative, and a string constant that names a project module (what `importlib.import_module`,
`importlib.resources` and `python -m` are given).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [  # earliest first: a module may import only from its own layer and the layers before it
    ["sonate.kernels"],
    ["sonate.models"],  # with models.world and models.metrics
    ["sonate.streamer.media", "sonate.streamer.protocol"],  # the types every user of the stream shares
    ["sonate.streamer.engine"],
    ["sonate.streamer"],  # the package __init__ only: the embedding API's lazy facade over the engine and media
    ["sonate.streamer.server"],
    ["sonate.clients"],
    ["sonate.streamer.bench"],
    ["sonate.streamer.cli"],
]
FACADE = "sonate.streamer"  # listed for its own module; its submodules all belong to the layers named above
HEAVY = ("torch", "fastapi", "uvicorn", "sonate.streamer.server", "sonate.streamer.engine")  # not for light commands


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the imported module (or the project module a string names)


def project_modules() -> dict[str, Path]:
    """Every module of the project by its import name, mapped from its file through pyproject's package-dir."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in package_dir.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in `source` (the code of `module`), relative ones resolved; a `from X import name` whose
    name is a project module counts as importing that module."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append(Import(module, node.lineno, submodule if submodule in known else target))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            found.append(Import(module, node.lineno, node.value))
    return found


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the most specific entry naming `module` or a package of it (None: no layer)."""
    matches = [
        (len(name), index)
        for index, names in enumerate(LAYERS)
        for name in names
        if module == name or module.startswith(name + ".")
    ]
    return max(matches)[1] if matches else None


def violations(found: list[Import]) -> list[str]:
    """`module:line → target` for each import of a project module from a later layer."""
    bad = []
    for imp in found:
        if not imp.target.startswith("sonate."):
            continue
        own, theirs = layer_of(imp.module), layer_of(imp.target)
        if theirs is not None and own is not None and theirs > own:
            bad.append(f"{imp.module}:{imp.line} → {imp.target}")
    return bad


def all_imports() -> list[Import]:
    """The imports of every project module."""
    modules = project_modules()
    known = set(modules)
    return [
        imp
        for name, path in modules.items()
        for imp in imports_of(name, path.read_text(), path.name == "__init__.py", known)
    ]


def test_every_module_has_a_layer() -> None:
    modules = project_modules()
    assert len(modules) > 50, "the package-dir mapping found too few modules"
    placed = {name: layer_of(name) for name in modules}
    assert [name for name, layer in placed.items() if layer is None] == []
    facade = LAYERS.index([FACADE])
    assert [name for name, layer in placed.items() if layer == facade] == [FACADE]


def test_imports_go_one_way() -> None:
    found = all_imports()
    assert len(found) > 300, "the import parser found too few imports"
    bad = violations(found)
    assert not bad, (
        "imports against the layer order " + " → ".join(" | ".join(n) for n in LAYERS) + ":\n" + "\n".join(bad)
    )


def test_an_import_reaching_back_is_reported() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from ..media.chunk import AVChunk\n"  # allowed: media is earlier than the engine
        "if TYPE_CHECKING:\n"
        "    from sonate.streamer.server.app import create_app\n"
        "def lazy():\n"
        "    from .. import bench\n"
        "    import sonate.clients.client\n"
    )
    known = {"sonate.streamer.bench", "sonate.streamer.media.chunk"}
    found = imports_of("sonate.streamer.engine.fake", source, False, known)
    assert {imp.target for imp in found} >= {"sonate.streamer.media.chunk", "sonate.streamer.server.app"}
    assert violations(found) == [
        "sonate.streamer.engine.fake:5 → sonate.streamer.server.app",
        "sonate.streamer.engine.fake:7 → sonate.streamer.bench",
        "sonate.streamer.engine.fake:8 → sonate.clients.client",
    ]
    names = {"sonate.streamer.engine.compute"}
    assert violations(imports_of("sonate.streamer.media.fake", '"sonate.streamer.engine.compute"', False, names))


def modules_loaded_by(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter has loaded after `sonate ARGV` (which exits, as --help does)."""
    script = (
        "import sys\n"
        "from sonate.streamer.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage: sonate" in result.stdout
    return set(result.stdout.splitlines())


def heavy(modules: set[str]) -> list[str]:
    """The modules of `modules` that a light command must not load."""
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in HEAVY))


def test_sonate_help_loads_neither_torch_nor_the_server() -> None:
    assert heavy(modules_loaded_by(["--help"])) == []


def test_sonate_say_help_loads_neither_torch_nor_the_server() -> None:
    loaded = modules_loaded_by(["say", "--help"])
    assert "sonate.streamer.cli.say" in loaded
    assert heavy(loaded) == []
