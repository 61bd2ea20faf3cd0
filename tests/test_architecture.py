"""The house rules, checked: imports point one way (pages -> ui -> features -> core; commands ->
features), no import cycle in engine/ (function-level imports count: a lazy import does not hide an
edge), no Streamlit below ui/, forward hooks only through engine/core/capture.py, thin pages, no ui/
module over UI_MODULE_LINES lines, and `lab` is `python -m engine`."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("superweights", "grokking", "attention", "uq")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def engine_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "engine").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in imports_of(path) if m in files and m != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "engine" or len(parts) == 1:
        return "root"
    return parts[1] if parts[1] in ("core", "commands", *FEATURES) else "root"


def test_no_import_cycle_in_engine():
    graph = engine_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strongconnect(v)
    # a package's __init__ importing its own modules is not a cycle of ideas; everything else is
    assert cycles == [], f"import cycles in engine/: {cycles}"


def test_dependencies_point_down():
    graph = engine_graph()
    bad = []
    for module, targets in graph.items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if here == "core" and there != "core":
                bad.append((module, target))  # the core knows no feature
            if here in FEATURES and there in ("commands", "root") and target not in ("engine",):
                bad.append((module, target))  # features never import the CLI
    assert bad == [], f"imports that point upward: {bad}"


def test_no_streamlit_below_ui():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "engine").rglob("*.py")
                 if any(m == "streamlit" or m.startswith("streamlit.") for m in imports_of(p))]
    assert offenders == []
    ui_importing_pages = [str(p.relative_to(ROOT)) for p in (ROOT / "ui").rglob("*.py")
                          if any(m.startswith("app_pages") for m in imports_of(p))]
    assert ui_importing_pages == []


def hook_calls(path: Path) -> list[int]:
    """Lines where the file calls `<something>.register_forward_hook(...)`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "register_forward_hook"]


def test_forward_hooks_only_through_capture():
    """Hooks go on and come off in one place (engine/core/capture.py: `capture`, `hooked`); tests may
    hook a model directly to check the lab against an independent reading."""
    capture = ROOT / "engine" / "core" / "capture.py"
    assert hook_calls(capture), "capture.py no longer registers hooks: update this test"
    files = [p for folder in ("engine", "ui", "app_pages", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    offenders = {str(p.relative_to(ROOT)): hook_calls(p) for p in files if p != capture and hook_calls(p)}
    assert offenders == {}, f"use engine.core.capture.capture / hooked instead: {offenders}"


def test_pages_are_thin_shells():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "app_pages").glob("*.py")}
    assert sizes and all(n <= 80 for n in sizes.values()), sizes


UI_MODULE_LINES = 400  # one idea per module: a view past this is split (charts, forms, panels)


def test_no_ui_module_over_its_size():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "ui").glob("*.py")}
    assert sizes and {name: n for name, n in sizes.items() if n > UI_MODULE_LINES} == {}


def test_config_modules_do_not_import_torch():
    """`--help` stays instant: the modules that hold config dataclasses never import torch."""
    code = ("import sys; import engine.cli as c; c.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("lab") is None and not (Path(sys.executable).parent / "lab").exists(),
                    reason="the `lab` console script is not installed (pip install -e .)")
def test_lab_script_is_python_m_engine():
    lab = shutil.which("lab") or str(Path(sys.executable).parent / "lab")
    a = subprocess.run([lab, "--help"], capture_output=True, text=True, check=True).stdout
    b = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=True).stdout
    assert a.replace("usage: lab ", "usage: python -m engine ", 1) == b
    assert all(f"    {name}" in a for name in ("superweights", "grok", "uq", "attention", "models"))


SOURCE_FOLDERS = ("engine", "ui", "app_pages", "benchmarks")
ESTIMATOR_HOMES = {  # where an estimator's name may be written out: its registry and the declared defaults
    "engine/uq/estimators.py": "the registry",
    "engine/uq/config.py": "USUAL_SCORE, SEMANTIC_SCORE, CURVE_BASELINES: the deliberate default choices",
}
MEASURE_HOMES = {  # where a grokking LLM measure's name may be written out (config's labels are its views)
    "engine/grokking/measure_registry.py": "the registry",
}
MEASURE_EXCEPTIONS = {  # (file, name): why the name is written there
    ("engine/grokking/config.py", "super_weight"): "a toy-model measure (config.Measure) and SweepConfig's default",
    ("engine/grokking/config.py", "massive_activation"): "a toy-model measure (config.Measure, MEASURE_LABELS)",
    ("engine/grokking/analysis.py", "super_weight"): "a toy-model onset (config.Measure) and the sweep's default",
    ("engine/grokking/analysis.py", "massive_activation"): "a toy-model onset (config.Measure, MEASURE_LABELS)",
    ("engine/grokking/study.py", "attention_sink"): "LAG_MEASURES: the study's chosen measures",
    ("engine/grokking/study.py", "massive_activation"): "LAG_MEASURES: the study's chosen measures",
    ("engine/grokking/study.py", "super_weight"): "LAG_MEASURES: the study's chosen measures",
    ("engine/grokking/study.py", "super_activation"): "LAG_MEASURES: the study's chosen measures",
    ("engine/commands/grok.py", "attention_sink"): "the study command's progress line names two onsets",
    ("engine/commands/grok.py", "massive_activation"): "the study command's progress line names two onsets",
    ("engine/superweights/confirm.py", "super_activation"): "the super-weight feature's own column, not the measure",
    ("engine/superweights/controls.py", "super_activation"): "the super-weight feature's own column, not the measure",
    ("ui/superweights_tables.py", "super_activation"): "the super-weight feature's own column, not the measure",
}


def name_literals(source: str, names) -> list[tuple[int, str]]:
    """(line, name) of every string constant of `source` that is exactly one of `names` (f-string parts and
    comments are not constants that equal a whole name)."""
    wanted = set(names)
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in wanted)


def misplaced_names(names, homes, exceptions=()) -> dict[str, list[tuple[int, str]]]:
    """file -> (line, name) of each registered name written outside its homes and the listed exceptions."""
    found = {}
    for path in sorted(p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in homes:
            continue
        hits = [(line, name) for line, name in name_literals(path.read_text(encoding="utf-8"), names)
                if (rel, name) not in exceptions]
        if hits:
            found[rel] = hits
    return found


def test_estimators_are_only_named_in_their_registry():
    """Reports, paired tests and contrasts take score names from engine.uq.estimators.ESTIMATORS (its kinds,
    needs and naming functions) or engine.uq.config's defaults; a score name written anywhere else fails."""
    from engine.uq.config import DEFAULT_SCORES
    from engine.uq.estimators import ESTIMATORS

    assert set(DEFAULT_SCORES) <= set(ESTIMATORS), "a default score is no registered estimator"
    assert misplaced_names(ESTIMATORS, ESTIMATOR_HOMES) == {}


def test_grokking_measures_are_only_named_in_their_registry():
    from engine.grokking.measure_registry import REGISTRY

    assert {name for _file, name in MEASURE_EXCEPTIONS} <= set(REGISTRY)
    assert misplaced_names(REGISTRY, MEASURE_HOMES, MEASURE_EXCEPTIONS) == {}
    written = {f: {name for _line, name in name_literals((ROOT / f).read_text(encoding="utf-8"), REGISTRY)}
               for f, _name in MEASURE_EXCEPTIONS}
    stale = {(f, name) for f, name in MEASURE_EXCEPTIONS if name not in written[f]}
    assert stale == set(), f"exceptions no longer needed: remove them from MEASURE_EXCEPTIONS: {stale}"


def test_a_score_name_written_in_a_report_is_caught():
    from engine.uq.estimators import ESTIMATORS

    report = (ROOT / "engine" / "uq" / "report.py").read_text(encoding="utf-8")
    assert name_literals(report, ESTIMATORS) == []
    planted = report + '\nCHOSEN = ("semantic_entropy", f"{1}_spread")\n'
    assert name_literals(planted, ESTIMATORS) == [(planted.count("\n"), "semantic_entropy")]


def test_a_measure_name_written_outside_its_registry_is_caught():
    from engine.grokking.config import LLM_MEASURE_LABELS
    from engine.grokking.measure_registry import REGISTRY

    assert dict(LLM_MEASURE_LABELS) == {name: spec.label for name, spec in REGISTRY.items()}  # a view, not a copy
    study = (ROOT / "engine" / "grokking" / "study.py").read_text(encoding="utf-8")
    planted = study + '\nCHOSEN = ("fourier", f"onset_{1}")\n'
    assert name_literals(planted, REGISTRY) == [*name_literals(study, REGISTRY), (planted.count("\n"), "fourier")]
