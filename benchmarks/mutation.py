"""Mutation check: do the tests of the modules that guard requests notice a small bug?

For each module below, mutmut (3.x, from PyPI) changes one thing at a time inside its
functions (`<` to `<=`, `0` to `1`, `and` to `or`, a call argument dropped, ...) and runs that
module's own unit tests against each change. A mutant the tests pass with "survived". The
score is (killed + timeouts) / (killed + timeouts + survived + no tests), per module: a
timeout is a mutant that made a test hang, which a test run notices too.

Each module runs on its own scratch copy of the work tree (tracked and untracked, not
ignored, files) with a `setup.cfg` naming that module and its tests, so one run is bounded
and never touches the checkout. Survivors are matched against `mutation_survivors.toml`
(beside this file), which says for each survivor left alive why it is harmless; any
survivor not explained there is printed as UNEXPLAINED and makes the exit code 1.

    make mutation                                   # all modules, results in benchmarks/results/mutation/
    python -m benchmarks.mutation --modules breaker manifest --max-children 1

CPU-heavy (each mutant runs the module's tests in a forked process): run it outside
`make test`, one module at a time (that is what it does), and note the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
SURVIVORS_FILE = Path(__file__).with_name("mutation_survivors.toml")
MUTMUT_VERSION = "3.8.1"
# Everything the tests import; only `only_mutate` of it is mutated, the rest is copied as is.
TIMEOUT_WHY = "detected: the mutant made a test hang (counted as killed)"
SOURCE_ROOMS = ("contract", "service", "testdoubles", "model_builder", "loadtest")


@dataclass(frozen=True)
class Target:
    """One module under mutation and the unit tests that are its own."""

    name: str
    source: str
    tests: tuple[str, ...]
    isolation: str = "fork"  # "forkserver" where the tests start gRPC (not fork-safe)
    deselect: str = ""  # a pytest -k expression for tests too slow to run once per mutant


TARGETS: tuple[Target, ...] = (
    Target("manifest", "contract/manifest.py", ("tests/contract/test_manifest.py",)),
    Target("breaker", "service/breaker.py", ("tests/service/test_breaker.py",)),
    Target("admission", "service/admission.py", ("tests/service/test_admission.py",)),
    Target(
        "batcher",
        "service/batcher.py",
        ("tests/service/test_batcher.py", "tests/service/test_admission.py"),
        deselect="not recovers_at_once",  # 200-request bursts around a 3 s stall: ~6 s a run
    ),
    Target("decode", "service/decode.py", ("tests/service/test_decode.py",)),
    Target(
        "tfserving",
        "service/backends/tfserving.py",
        (
            "tests/service/test_tfserving_client.py",
            "tests/service/test_tfserving_lifecycle.py",
            "tests/service/test_tfserving_strict.py",
        ),
        isolation="forkserver",
    ),
)
BY_NAME = {t.name: t for t in TARGETS}


def _setup_cfg(target: Target) -> str:
    def block(key: str, values: tuple[str, ...] | list[str]) -> str:
        return f"{key}=\n" + "".join(f"    {v}\n" for v in values)

    return (
        "[mutmut]\n"
        + block("source_paths", [f"{room}/" for room in SOURCE_ROOMS])
        + block("only_mutate", [target.source])
        + block(
            "pytest_add_cli_args_test_selection",
            [*target.tests, *(("-k", target.deselect) if target.deselect else ())],
        )
        # Log lines are not mutated: their wording is not behaviour.
        + block("do_not_mutate_patterns", [r"log\.\w+\("])
        # -x: a mutant is killed at its first failing test; --timeout: a test that a mutant
        # makes hang fails (is killed) within a minute instead of holding a worker.
        + block("pytest_add_cli_args", ["-p", "no:cacheprovider", "-q", "-x", "--timeout=60"])
        + f"process_isolation={target.isolation}\n"
        # A mutant whose tests take 3x as long as the clean run (+2 s) counts as a timeout.
        + "timeout_multiplier=3.0\ntimeout_constant=2.0\n"
    )


def scratch_copy(dest: Path) -> None:
    """The work tree's files (tracked, plus untracked that git does not ignore) under `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    for raw in files:
        if not raw:
            continue
        rel = Path(raw.decode())
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _mutmut(workdir: Path, *args: str, timeout_s: float | None = None) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        raise SystemExit(f"error: mutmut is not installed: pip install 'mutmut=={MUTMUT_VERSION}'")
    # mutmut puts <workdir>/mutants first on sys.path and takes <workdir> itself off it.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [str(exe), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mutmut {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def _diff(show: str) -> tuple[list[str], list[str]]:
    """The removed and added lines of `mutmut show` (stripped, headers dropped)."""
    minus = [
        ln[1:].strip()
        for ln in show.splitlines()
        if ln.startswith("-") and not ln.startswith("---")
    ]
    plus = [
        ln[1:].strip()
        for ln in show.splitlines()
        if ln.startswith("+") and not ln.startswith("+++")
    ]
    return minus, plus


def function_of(mutant: str) -> str:
    """`service.breaker.xǁCircuitBreakerǁ__init____mutmut_1` -> `service.breaker.CircuitBreaker.__init__`."""
    base = re.sub(r"__mutmut_\d+$", "", mutant)
    module, _, func = base.rpartition(".")
    if func.startswith("xǁ"):
        cls, _, meth = func[2:].partition("ǁ")
        return f"{module}.{cls}.{meth}"
    return f"{module}.{func.removeprefix('x_')}"


def load_explanations(path: Path = SURVIVORS_FILE) -> dict[str, Any]:
    """`mutation_survivors.toml`: `[rules]` and `[[survivor]]` (function, minus, plus, why)."""
    if not path.exists():
        return {}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def wording_only(minus: str, plus: str) -> bool:
    """The mutant only changes the wording of a string (mutmut's "XX..XX" or letter case)."""
    return plus != minus and (plus.replace("XX", "") == minus or plus.lower() == minus.lower())


_RAISE = re.compile(r"(raise|return) (\w+)\(")


def is_exception(name: str) -> bool:
    """`name` is an exception class of our error trees or a builtin one (`return X(...)` of
    anything else, e.g. a result object, is behaviour, not a message)."""
    import builtins

    from contract import errors as contract_errors
    from service import errors as service_errors

    for room in (service_errors, contract_errors, builtins):
        found = getattr(room, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return True
    return False


def message_only(minus: str, plus: str) -> bool:
    """The mutant only changes the text an error carries: the same exception class is raised
    (with nothing but its message changed), or a message's own line changes."""
    if minus.partition("retry_after")[2] != plus.partition("retry_after")[2]:
        return False  # Retry-After is behaviour, not text
    raised, again = _RAISE.match(minus), _RAISE.match(plus)
    if raised and (raised.group(1) == "raise" or is_exception(raised.group(2))):
        return again is not None and again.groups() == raised.groups()
    text = ('f"', '"')
    return minus.startswith(text) and (plus in ("", "None", "None,") or plus.startswith(text))


def explain(function: str, minus: str, plus: str, known: dict[str, Any]) -> str | None:
    """The reason a survivor is harmless, or None when `mutation_survivors.toml` has none.

    `[rules]` say why a whole kind of mutant is harmless (`wording`: only a message's
    wording changed); each `[[survivor]]` names one mutant by function and its two lines.
    """
    rules = known.get("rules", {})
    if "wording" in rules and wording_only(minus, plus):
        return str(rules["wording"])
    if "message" in rules and message_only(minus, plus):
        return str(rules["message"])
    for entry in known.get("survivor", []):
        if entry["function"] == function and (entry["minus"], entry["plus"]) == (minus, plus):
            return str(entry["why"])
    return None


def run_target(
    target: Target, workdir: Path, max_children: int, timeout_s: float
) -> dict[str, Any]:
    """Mutate one module against its tests; the stats and every survivor's diff."""
    scratch = workdir / target.name
    scratch_copy(scratch)
    (scratch / "setup.cfg").write_text(_setup_cfg(target), encoding="utf-8")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    _mutmut(scratch, "run", "--max-children", str(max_children), timeout_s=timeout_s)
    wall_s = time.monotonic() - t0
    _mutmut(scratch, "export-cicd-stats")
    stats = json.loads((scratch / "mutants" / "mutmut-cicd-stats.json").read_text())
    known = load_explanations()
    survivors = []
    for line in _mutmut(scratch, "results").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        minus, plus = (" ".join(lines) for lines in _diff(_mutmut(scratch, "show", name)))
        function = function_of(name)
        survivors.append({
            "mutant": name, "status": status, "function": function, "minus": minus,
            "plus": plus,
            "why": TIMEOUT_WHY if status == "timeout" else explain(function, minus, plus, known),
        })  # fmt: skip
    # A timeout (the mutant made a test run 3x its clean time: a hang) is a detection too.
    detected = stats["killed"] + stats["timeout"]
    counted = detected + stats["survived"] + stats["no_tests"]
    return {
        "module": target.source,
        "tests": list(target.tests),
        "stats": stats,
        "score": detected / counted if counted else None,
        "wall_s": round(wall_s, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "survivors": survivors,
    }


def machine() -> str:
    info = machine_info()
    return f"{info['cpu']}, {info['cores']} cores, Python {info['python']}"


def markdown(results: list[dict[str, Any]]) -> str:
    """A score table and one line per survivor, as written into docs/testing.md."""
    rows = ["| module | mutants | killed | timeout | survived | no tests | score | run (commit, wall, load 1-min before/after) |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        s = r["stats"]
        load = f"{r['load_before'][0]}/{r['load_after'][0]}"
        rows.append(
            f"| `{r['module']}` | {s['total']} | {s['killed']} | {s['timeout']} | {s['survived']} "
            f"| {s['no_tests']} | **{r['score']:.1%}** | {r['date']}, {r['commit']}, "
            f"{r['wall_s']:.0f} s, {load} |"
        )
    rows += ["", "| module | function | mutation | why it is harmless |", "|---|---|---|---|"]
    for r in results:
        for sv in r["survivors"]:
            if sv["status"] == "timeout":
                continue  # detected: counted with the killed ones
            change = f"`{sv['minus']}` -> `{sv['plus']}`".replace("|", "\\|")
            why = sv["why"] or f"**UNEXPLAINED** ({sv['status']})"
            function = (
                sv["function"].rpartition(".")[2] if "." in sv["function"] else sv["function"]
            )
            rows.append(f"| `{Path(r['module']).stem}` | `{function}` | {change} | {why} |")
    return "\n".join(rows)


def reexplain(result: dict[str, Any]) -> dict[str, Any]:
    """`result` with every survivor's reason looked up again in mutation_survivors.toml."""
    known = load_explanations()
    for sv in result["survivors"]:
        if sv["status"] != "timeout":
            sv["why"] = explain(sv["function"], sv["minus"], sv["plus"], known)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", choices=sorted(BY_NAME), default=sorted(BY_NAME),
                        help="which modules (default: all, one after another)")  # fmt: skip
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--timeout-s", type=float, default=3600, help="bound on one module's run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/resnet-serving-mutation"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: print the tables from the results in --out, with the "
                             "reasons in mutation_survivors.toml as they are now")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report:
        found = [args.out / f"{m}.json" for m in args.modules if (args.out / f"{m}.json").exists()]
        return report([reexplain(json.loads(f.read_text(encoding="utf-8"))) for f in found])
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    out = args.out.resolve()
    skip = [f":!{out.relative_to(ROOT)}"] if out.is_relative_to(ROOT) else []
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", ".", *skip],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())  # fmt: skip
    header = {
        "machine": machine(),
        "commit": commit + ("+dirty" if dirty else ""),
        "mutmut": MUTMUT_VERSION,
        "command": "python -m benchmarks.mutation " + " ".join(argv or sys.argv[1:]),
    }
    results = []
    for name in args.modules:
        target = BY_NAME[name]
        print(f"mutating {target.source} against {', '.join(target.tests)} ...", flush=True)
        date = time.strftime("%Y-%m-%d %H:%M %Z")
        result = {"date": date, **header, **run_target(target, args.workdir, args.max_children,
                                                       args.timeout_s)}  # fmt: skip
        (args.out / f"{name}.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        s = result["stats"]
        print(f"  {s['killed']}/{s['total']} killed, {s['survived']} survived, "
              f"{s['no_tests']} no tests, {s['timeout']} timeouts in {result['wall_s']} s "
              f"(load {result['load_before'][0]} -> {result['load_after'][0]})", flush=True)  # fmt: skip
        results.append(result)
    return report(results)


def stale_entries(modules: list[str], known: dict[str, Any]) -> list[dict[str, Any]]:
    """`[[survivor]]` entries of `modules` (source paths) whose line is no longer in the
    source: the code they explain is gone, so they would only hide a future mutant. Spaces
    are compared collapsed: mutmut prints a change that spans lines (a call's last argument
    dropped) on one line, e.g. `reducing_gap=_REDUCING_GAP, )`."""
    stale = []
    for module in modules:
        source = " ".join((ROOT / module).read_text(encoding="utf-8").split())
        prefix = module.removesuffix(".py").replace("/", ".") + "."
        for entry in known.get("survivor", []):
            minus = " ".join(entry["minus"].split())
            if entry["function"].startswith(prefix) and minus not in source:
                stale.append(entry)
    return stale


def report(results: list[dict[str, Any]]) -> int:
    """Print the tables; 1 when a survivor is not explained."""
    if results:
        r = results[0]
        print(f"\n{r['machine']}, mutmut {r['mutmut']}\n")
    print(markdown(results))
    for entry in stale_entries([r["module"] for r in results], load_explanations()):
        print(f"stale entry in {SURVIVORS_FILE.name} (its line is gone from the source): "
              f"{entry['function']}: {entry['minus']}", file=sys.stderr)  # fmt: skip
    unexplained = [sv for r in results for sv in r["survivors"] if sv["why"] is None]
    if unexplained:
        print(f"\n{len(unexplained)} survivor(s) UNEXPLAINED: kill them with a test, or say in "
              f"{SURVIVORS_FILE.name} why they are harmless", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
