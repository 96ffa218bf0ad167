"""The import graph points one way: cli -> commands -> tools -> training -> monitor/validate -> data/model
-> config/runfolder -> core (docs/architecture.md draws it). Checked on the source, every import
included (also those inside functions), so that a new capability cannot land in the wrong layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nestkit"

# Lowest first. A package may import its own modules and those of lower layers, never a higher
# layer and never a sibling in the same layer.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("config", "runfolder"),
    ("data", "model"),
    ("validate", "monitor"),
    ("training",),
    ("tools",),
    ("commands",),
    ("cli", "__main__"),
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("nestkit.")]


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(LAYER_OF), f"give these a layer: {sorted((packages | modules) - set(LAYER_OF))}"


def test_imports_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _package("nestkit." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own == "__init__":
            continue
        for line, name in _imports(path):
            other = _package(name)
            if other == own or other == "__init__" or other not in LAYER_OF:
                continue
            if LAYER_OF[other] >= LAYER_OF[own]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {name}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_validator_and_run_folder_stay_light():
    """`pip install nestkit` (no [train] extra) must run validate-manifest, and `stacks` on a login node
    that has no torch: nothing heavy at import."""
    code = (
        "import sys; import nestkit.cli, nestkit.commands.validate_manifest, nestkit.validate.validator, "
        "nestkit.runfolder.records, nestkit.config, nestkit.commands.stacks, nestkit.monitor.stall_report; "
        "heavy = sorted(m for m in ('torch', 'lhotse', 'pytorch_lightning', 'lightning', 'matplotlib') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
