"""The import rules of docs/architecture.md, read from the source of every module of the two packages (ast).

Each module belongs to a part; a part imports only the parts listed for it in ``MAY_IMPORT`` (its floor and
those below it), no module takes a name starting with ``_`` from another module, and no module imports the
libraries the house rules exclude.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nnunet_allukan", "dataset_conversion")
FLOORS = ("layers", "networks", "evaluation", "training", "commands")

# part -> the parts it may import (docs/architecture.md, "What may import what").
MAY_IMPORT: dict[str, set[str]] = {
    "base": {"base"},
    "layers": {"base", "layers"},
    "networks": {"base", "layers", "networks"},
    "evaluation": {"base", "layers", "evaluation"},
    "training": {"base", "layers", "networks", "training"},
    "commands": {"base", "layers", "networks", "evaluation", "training", "commands"},
    "dataset_conversion": {"base", "dataset_conversion"},
}
# part -> third-party packages it must not import.
NEVER: dict[str, set[str]] = {
    "layers": {"nnunetv2", "batchgenerators", "dynamic_network_architectures", "sklearn"},
    "networks": {"nnunetv2", "batchgenerators"},
    "base": {"torch", "nnunetv2", "batchgenerators", "dynamic_network_architectures"},
}
EVERYWHERE_NEVER = {"timm", "torchvision"}


def part_of(module: str) -> str | None:
    """The part of a dotted module name of the packages; None for anything else."""
    parts = module.split(".")
    if parts[0] == "dataset_conversion":
        return "dataset_conversion"
    if parts[0] != "nnunet_allukan":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else "base"


def package_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[dotted.removesuffix(".__init__")] = path
    return modules


MODULES = package_modules()


def is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def imports_of(module: str, tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import statement, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package(module) else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(module: str, path: Path, source: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    part = part_of(module)
    problems = []
    bound: dict[str, str] = {}  # local name -> the project module it is bound to
    for line, target, names in imports_of(module, tree):
        where = f"{path.relative_to(ROOT)}:{line}"
        top = target.split(".")[0]
        if top in EVERYWHERE_NEVER | NEVER.get(part, set()):
            problems.append(f"{where}: {part} imports {target}")
        imported = part_of(target)
        if imported is None:
            continue
        for name in names:
            if f"{target}.{name}" in MODULES:  # a module imported from its package
                imported_name = part_of(f"{target}.{name}")
                bound[name] = f"{target}.{name}"
            else:
                imported_name = imported
                if private(name) and target != module:
                    problems.append(f"{where}: imports the private name {name} of {target}")
            if imported_name not in MAY_IMPORT[part]:
                problems.append(f"{where}: {part} ({module}) imports {imported_name} ({target}.{name})")
        if not names:
            bound[target.split(".")[0]] = target.split(".")[0]
            if imported not in MAY_IMPORT[part]:
                problems.append(f"{where}: {part} ({module}) imports {imported} ({target})")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and private(node.attr) and bound[node.value.id] != module):
            problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses the private name {node.attr} of "
                            f"{bound[node.value.id]}")
    return problems


def test_every_module_keeps_the_import_rules():
    assert len(MODULES) > 40 and {"nnunet_allukan.paper", "dataset_conversion.cli"} <= set(MODULES)
    problems = [problem for module, path in MODULES.items() for problem in violations(module, path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module, source, message", [
    ("nnunet_allukan.training.x", "from dataset_conversion.cli import main\n", "training (nnunet_allukan.training.x) "
                                                                             "imports dataset_conversion"),
    ("nnunet_allukan.networks.x", "from ..training import trainers\n", "networks (nnunet_allukan.networks.x) imports "
                                                                      "training"),
    ("nnunet_allukan.evaluation.x", "import nnunet_allukan.networks.ukan\n", "evaluation (nnunet_allukan.evaluation.x) "
                                                                            "imports networks"),
    ("nnunet_allukan.layers.x", "from nnunetv2.paths import nnUNet_raw\n", "layers imports nnunetv2.paths"),
    ("nnunet_allukan.paper", "import torch\n", "base imports torch"),
    ("dataset_conversion.x", "from nnunet_allukan.layers import KALinear\n",
     "dataset_conversion (dataset_conversion.x) imports layers"),
    ("nnunet_allukan.commands.x", "from nnunet_allukan.training.trainers import _define\n",
     "imports the private name _define"),
    ("nnunet_allukan.commands.x", "from nnunet_allukan.layers.kernels import native\nnative._LIBRARY = None\n",
     "uses the private name _LIBRARY of nnunet_allukan.layers.kernels.native"),
    ("nnunet_allukan.networks.x", "import torchvision\n", "networks imports torchvision"),
])
def test_the_rules_catch_each_kind_of_break(module, source, message):
    problems = violations(module, ROOT / "nnunet_allukan" / "probe.py", source)
    assert any(message in p for p in problems), problems
