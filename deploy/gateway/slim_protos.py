#!/usr/bin/env python3
"""Copy only the `tensorflow.*` protobuf modules that TF Serving's client API needs.

    slim_protos.py SOURCE OUT_DIR

`tensorflow-serving-api`'s generated `*_pb2.py` import `tensorflow.core.framework.*_pb2` and
friends, which normally drags in the whole TensorFlow wheel (~600 MB). Those modules are plain
generated Python, so this follows their imports from `tensorflow_serving/apis` and
`tensorflow_serving/config` and copies just that closure (a few hundred KB) into
`OUT_DIR/tensorflow/...`, with an empty `__init__.py` per package: `import tensorflow` then
finds no runtime at all. SOURCE is a site-packages directory or a tensorflow `.whl`; the
`tensorflow_serving` package is looked up on sys.path.
"""

from __future__ import annotations

import ast
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import tensorflow_serving

ROOT_PACKAGES = ("apis", "config")  # what the gateway's gRPC client imports
Reader = Callable[[str], "str | None"]  # relative path -> source text (None when absent)


def tensorflow_imports(source: str, package: str) -> set[str]:
    """Dotted names (modules or candidates) under `tensorflow.` that `source` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tensorflow."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside the tensorflow tree
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.startswith("tensorflow."):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def closure(roots: Iterable[str], read: Reader) -> dict[str, str]:
    """Module path -> source for every tensorflow module reachable from `roots` (sources)."""
    todo = [name for src in roots for name in tensorflow_imports(src, "")]
    out: dict[str, str] = {}
    while todo:
        name = todo.pop()
        rel = name.replace(".", "/") + ".py"
        if rel in out:
            continue
        text = read(rel)
        if text is None:  # a package, or `from pkg import name` where name is not a module
            continue
        out[rel] = text
        todo.extend(tensorflow_imports(text, name.rpartition(".")[0]))
    if not out:
        raise SystemExit("slim_protos: found no tensorflow modules; wrong SOURCE?")
    return out


def reader_for(source: Path) -> Reader:
    """Read files from a site-packages directory or from inside a wheel."""
    if source.is_dir():
        return lambda rel: (source / rel).read_text("utf-8") if (source / rel).is_file() else None
    wheel = zipfile.ZipFile(source)
    names = set(wheel.namelist())
    return lambda rel: wheel.read(rel).decode("utf-8") if rel in names else None


def serving_sources() -> list[str]:
    """Sources of the generated modules in tensorflow_serving/{apis,config}."""
    base = Path(tensorflow_serving.__file__).parent
    return [
        p.read_text("utf-8") for sub in ROOT_PACKAGES for p in sorted((base / sub).glob("*.py"))
    ]


def write_tree(modules: dict[str, str], out_dir: Path) -> list[Path]:
    """Write the modules plus an empty `__init__.py` in every package directory."""
    written = []
    for rel, text in sorted(modules.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        written.append(path)
        for parent in path.relative_to(out_dir).parents:
            if parent != Path("."):
                (out_dir / parent / "__init__.py").touch()
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    written = write_tree(closure(serving_sources(), reader_for(Path(argv[1]))), Path(argv[2]))
    print(f"slim_protos: {len(written)} tensorflow proto modules -> {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
