"""The rooms of the house and who may import whom (docs/architecture.md), checked on the source.

Every import statement counts, at module level or inside a function: a lazy import is still
a dependency. The contract sits at the bottom and imports nothing of ours and no TensorFlow;
model_builder, service, loadtest and rollout stand side by side on it and never import each
other;
test doubles stand on the contract alone; benchmarks and the entry point are at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("contract", "model_builder", "service", "loadtest", "rollout", "testdoubles",
         "benchmarks", "resnet_serving")  # fmt: skip
MAY_IMPORT = {
    "contract": {"contract"},
    "model_builder": {"contract", "model_builder"},
    "service": {"contract", "service"},
    "loadtest": {"contract", "loadtest"},
    "rollout": {"contract", "rollout"},
    "testdoubles": {"contract", "testdoubles"},
    "benchmarks": set(ROOMS) - {"resnet_serving"},
    "resnet_serving": set(ROOMS),
}
TENSORFLOW = {"tensorflow", "keras", "tensorflow_serving"}
HEAVY = TENSORFLOW | {"fastapi", "starlette", "uvicorn"}
# Being removed (issue 10): each entry must disappear, never grow.
KNOWN_CYCLES: set[str] = set()


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of every room."""
    found = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, module: str) -> set[str]:
    """Absolute dotted names `path` imports (relative imports resolved against `module`)."""
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_every_room_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for module, path in modules().items():
        room = module.split(".")[0]
        for name in imports_of(path, module):
            top = name.split(".")[0]
            if top in ROOMS and top not in MAY_IMPORT[room]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports against the room order:\n" + "\n".join(sorted(wrong))


def test_the_contract_imports_no_tensorflow_nor_web_framework() -> None:
    heavy = [
        f"{path.relative_to(ROOT)} imports {name}"
        for module, path in modules().items()
        if module.split(".")[0] == "contract"
        for name in imports_of(path, module)
        if name.split(".")[0] in HEAVY
    ]
    assert not heavy, "\n".join(heavy)


def test_no_import_cycle_between_modules() -> None:
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in known.items():
        for name in imports_of(path, module):
            # `from pkg import mod` names a module; `from mod import func` names its module.
            target = name if name in known else name.rpartition(".")[0]
            if target in known and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(known):
        if node not in state:
            visit(node, [node])
    new = sorted(set(cycles) - KNOWN_CYCLES)
    assert not new, "import cycles:\n" + "\n".join(new)


def test_no_module_imports_another_modules_private_names() -> None:
    """A leading underscore means "this module's own": another module that needs it needs a
    public name (dunders such as __version__ aside)."""
    private = [
        f"{path.relative_to(ROOT)} imports {node.module}.{alias.name}"
        for module, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ROOMS
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize(
    "module",
    [
        "contract.manifest",
        "contract.tfs_config",
        "contract.wire",
        "contract.tfs_grpc",
        "resnet_serving.cli",
        "service.app",
        "service.backends.tfserving",
        "loadtest.targets",
        "rollout.run",
    ],
)
def test_importing_it_loads_no_tensorflow(module: str) -> None:
    """What the gateway image and the load tester run must not need TensorFlow."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(TENSORFLOW)!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} loads {result.stdout.strip()}"
