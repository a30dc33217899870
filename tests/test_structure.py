"""The package's shape: dependencies run one way between stages, there are no import cycles, and
every module imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "finsurg"
APP = {"finsurg.export", "finsurg.settings", "finsurg.outcomes", "finsurg.api", "finsurg.cli", "finsurg.__main__"}
PACKAGES = ("io", "engines", "models", "steer", "packs", "analysis", "variant", "bake", "checks", "hub", "monitor")
# what each group may import besides itself: foundations first, then the stages in the order data flows
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "engines": {"core"},
    "steer": {"core"},
    "packs": {"core"},
    "models": {"core", "io", "steer"},
    "analysis": {"core", "io", "steer", "packs", "models"},
    "variant": {"core", "io", "steer", "packs"},
    "bake": {"core", "io", "engines", "steer", "packs", "models", "variant"},
    "checks": {"core", "io", "engines", "steer", "packs", "models", "variant", "bake"},
    "hub": {"core", "io", "variant"},
    "monitor": {"core", "io", "engines", "steer", "packs", "models", "analysis"},
    "app": {
        "core",
        "io",
        "engines",
        "steer",
        "packs",
        "models",
        "analysis",
        "variant",
        "bake",
        "checks",
        "hub",
        "monitor",
    },
}
SCRIPTS = PACKAGE / "engines" / "scripts"  # run inside other environments, never imported
BENCH = ROOT / "bench"
# bench/ runs what a user runs through the API and the settings; below the API it measures only these, each for a
# reason no command serves
BENCH_API = {"finsurg", "finsurg.api", "finsurg.settings", "finsurg.progress"}
BENCH_INTERNALS = {
    "finsurg.bake.writer": "the writer alone, one variant: the stream an export's verification runs beside",
    "finsurg.models.source": "the models a benchmark loads, and the default model's GGUF it copies",
    "finsurg.models.loading": "generation speed of the baked variant against the base and both hook routes",
    "finsurg.models.bridge": "the TransformerLens hook route and phase 1's batched throughput",
    "finsurg.steer.hooks": "the two hook routes, timed against the baked variant",
    "finsurg.steer.arch": "where the hook routes land",
    "finsurg.variant.directory": "the surgery a variant records, for its hook routes",
    "finsurg.analysis.activations": "phase 1 throughput, batched against one prompt at a time",
    "finsurg.analysis.batching": "phase 1's batches, padded as the analysis pads them",
    "finsurg.analysis.measures": "repeng's vector and finsurg's recipe measured by the same code at matched KL",
    "finsurg.analysis.behaviour": "the neutral replies' held-out half, as the analysis splits them",
    "finsurg.effects": "the matched-KL comparison's intervals",
    "finsurg.steer.surgery": "repeng's vector as a surgery, for the same measurement",
    "finsurg.steer.recipe": "presets made conditional, and the tuned recipe for the matched-KL comparison",
    "finsurg.io.safetensors_io": "the synthetic 8B-shaped checkpoint, written in slices",
    "finsurg.monitor.labelled": "the monitor's cost per conversation against a full forward of its base",
    "finsurg.monitor.synthetic": "planted logs: the scoring benchmark's input",
    "finsurg.monitor.conversations": "the long-conversation benchmark's conversations, built as the monitor's are",
    "finsurg.packs": "the pack whose texts the benchmarks feed",
    "finsurg.steer.findings": "results.md renders the analysis's findings",
    "finsurg.steer.finding_tables": "results.md renders the analysis's findings",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "data" in path.relative_to(PACKAGE).parts or path.is_relative_to(SCRIPTS):
            continue  # lm-eval task helpers, loaded by lm-eval itself; engine scripts
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def group(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    if module in APP:
        return "app"
    return "core"


def imported(source: str, known: set[str]) -> set[str]:
    """finsurg modules a source imports, at any depth (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("finsurg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finsurg"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                names.add(child if child in known else node.module)
    return names


def violations(module: str, source: str, known: set[str]) -> list[str]:
    mine = group(module)
    return [
        f"{module} ({mine}) imports {target} ({group(target)})"
        for target in sorted(imported(source, known))
        if group(target) != mine and group(target) not in ALLOWED[mine]
    ]


def test_dependencies_run_one_way():
    found = modules()
    problems = [v for name, path in found.items() for v in violations(name, path.read_text(), set(found))]
    assert not problems, "\n".join(problems)


def test_root_holds_only_foundations_and_the_app():
    """Modules at the package root: the few foundations every package uses, and the app."""
    root = {name for name in modules() if name.count(".") == 1 and name.split(".")[1] not in PACKAGES}
    foundations = {"finsurg.errors", "finsurg.dtypes", "finsurg.jsonfile", "finsurg.progress", "finsurg.devices"}
    foundations |= {"finsurg.options", "finsurg.effects", "finsurg.environment"}
    assert root - {"finsurg"} == foundations | APP


def test_engine_scripts_import_nothing_of_finsurg_and_nothing_imports_them():
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert {p.stem for p in scripts} == {"vllm_greedy", "vllm_classify", "lmeval_vllm", "llamacpp", "script_reply"}
    for path in scripts:
        assert not imported(path.read_text(), set()), f"{path.name} imports finsurg"
    for name, path in modules().items():
        reached = [m for m in imported(path.read_text(), set()) if m.startswith("finsurg.engines.scripts")]
        assert not reached, f"{name} imports {reached}"


def test_the_check_catches_an_upward_import():
    known = set(modules())
    assert violations("finsurg.steer.recipe", "from finsurg.bake.bake import bake\n", known)
    assert violations("finsurg.analysis.derive", "import finsurg.variant.record\n", known)
    assert violations(
        "finsurg.variant.card", "def f():\n    from finsurg.checks.evaluation import render_table\n", known
    )
    assert violations("finsurg.io.checkpoint", "from finsurg.steer.arch import Architecture\n", known)
    assert violations("finsurg.engines.runner", "from finsurg.variant.directory import Variant\n", known)
    assert not violations("finsurg.checks.verify", "from finsurg.variant.directory import Variant\n", known)


def test_bench_goes_through_the_api():
    """bench/ imports the API and the settings, and below them only what BENCH_INTERNALS names a reason for."""
    known = set(modules())
    stray = {
        f"{path.name} imports {name}"
        for path in sorted(BENCH.glob("*.py"))
        for name in imported(path.read_text(), known)
        if name not in BENCH_API and name not in BENCH_INTERNALS
    }
    assert not stray, "\n".join(sorted(stray))
    used = {name for path in BENCH.glob("*.py") for name in imported(path.read_text(), known)}
    assert set(BENCH_INTERNALS) <= used, f"named but unused: {sorted(set(BENCH_INTERNALS) - used)}"


def test_no_import_cycles():
    found = modules()
    graph = {name: imported(path.read_text(), set(found)) & set(found) for name, path in found.items()}
    for name in graph:
        graph[name].discard(name)
        graph[name] -= {p for p in graph if name.startswith(p + ".")}  # a package's __init__ is not a dependency
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail + [node, target]))
            if target not in state:
                visit(target, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_module_imports_alone():
    """Each module imported first, in a process where no other finsurg module is loaded yet."""
    names = [name for name in modules() if name != "finsurg.__main__"]
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'finsurg' or m.startswith('finsurg.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
