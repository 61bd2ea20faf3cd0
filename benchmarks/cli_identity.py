"""The four features' command-line outputs on fixed tiny inputs, at this checkout and at an older commit, compared
file by file (the evidence that a refactor left every number as it was).

    python benchmarks/cli_identity.py                      # against ccb0f3b (before the views-on-one-kit and
                                                           # one-place-registries work), table on stdout
    python benchmarks/cli_identity.py --old <commit> --old-tree /tmp/other --same-args --features grok attention

The old commit is checked out once as a detached git worktree (`--old-tree`, kept for the next call); each side
runs `python -m engine ...` with PYTHONPATH at its tree and a cache of its own (LAB_CACHE_DIR: nothing is reused
between the sides; the converted embedded models are linked in), on one torch thread (CUDA hidden), niced.

A file's verdict:
- identical: the same bytes;
- same content: different bytes, the same values after the volatile fields are set aside (wall-clock seconds,
  times of day, the run folder's path: VOLATILE) and, for a table, only the columns both sides write compared
  (the new columns and fields are listed);
- differs: a shared value differs (the fields, columns or lines are named); only old / only new: one side writes it.
Standard output is compared as a file (`stdout.txt`, the work folders' paths replaced by `<out>`); a grokking
run's checkpoints byte by byte, in one row. `--same-args`: an old commit that has the new side's flags runs
them too (CASES' old arguments are those of ccb0f3b). Exit code 1 when a file differs or a command failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "cache" / "models"
OLD = "ccb0f3b"
# fields whose value is a clock reading or a machine path: equal inputs give different values on every run
VOLATILE = {
    "elapsed_s",
    "seconds",
    "measure_seconds",
    "train_seconds",
    "wall_seconds",
    "created",
    "updated",
    "utc",
    "time_utc",
    "path",
    "run_dir",
}
VOLATILE_IN = {"status.json": {"time"}}  # per file: a run's status time (summary.json's "time" is a step count)


@dataclass(frozen=True)
class Case:
    """One feature's command: its arguments (`{out}`: the output folder) at the old checkout and, where they
    differ, at the new one (the new side may add flags that select the old behaviour where a default changed on
    purpose), and why."""

    feature: str
    old: tuple[str, ...]
    new_args: tuple[str, ...] | None = None
    note: str = ""

    @property
    def new(self) -> tuple[str, ...]:
        """The new checkout's arguments (the old side's unless set)."""
        return self.old if self.new_args is None else self.new_args


PROMPT = "The cat sat on the mat. The cat"
UQ_ARGS = ("uq", "--questions", "default", "--limit", "2", "--samples", "2", "--max-new-tokens", "8", "--quiet")
GROK_ARGS = ("grok", "--p", "7", "--steps", "60", "--eval-every", "20", "--checkpoint-every", "20", "--threads", "1")
CASES = (
    Case("uq", (*UQ_ARGS, "--out", "{out}")),
    Case("grok", (*GROK_ARGS, "--out", "{out}")),
    Case(
        "superweights",
        ("superweights", "--no-ablation", "--out", "{out}"),
        ("superweights", "--no-ablation", "--no-confirm", "--column", "input", "--out", "{out}"),
        "new side: --column input (the paper's rule, the old default) and --no-confirm (the causal test is new)",
    ),
    Case("attention", ("attention", "--prompt", PROMPT, "--out", "{out}")),
)


def ensure_tree(commit: str, tree: Path) -> Path:
    """A detached worktree of `commit` at `tree` (made once; reused when it is already that commit)."""
    if tree.exists():
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        want = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True)
        if head.returncode == 0 and head.stdout.strip() == want.stdout.strip():
            return tree
        raise SystemExit(f"{tree} exists and is not {commit}: remove it (git worktree remove {tree}) or pick another")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True, capture_output=True
    )
    return tree


def run_side(tree: Path, args: tuple[str, ...], out: Path, cache: Path) -> tuple[int, float]:
    """`python -m engine args` in `tree` writing to `out`; stdout to out/stdout.txt. (exit code, seconds)"""
    out.mkdir(parents=True, exist_ok=True)
    (cache / "models").parent.mkdir(parents=True, exist_ok=True)
    if not (cache / "models").exists():
        (cache / "models").symlink_to(MODELS.resolve())
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "LAB_CACHE_DIR": str(cache),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    argv = [a.replace("{out}", str(out)) for a in args]
    start = time.perf_counter()
    done = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-m", "engine", *argv], cwd=tree, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    (out / "stdout.txt").write_text(done.stdout.replace(str(out), "<out>").replace(str(cache), "<cache>"))
    (out.parent / f"{out.name}.stderr.txt").write_text(done.stderr)
    return done.returncode, seconds


def _drop_volatile(value, volatile: set[str]):
    if isinstance(value, dict):
        return {k: _drop_volatile(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [_drop_volatile(v, volatile) for v in value]
    return value


def _differences(a, b, where: str = "") -> list[str]:
    """Where two JSON values differ, over the keys both have (sorted paths; empty: nowhere)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(a.keys() & b.keys()) for d in _differences(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where or "value"]


def _listed(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _new_keys(a, b, where: str = "") -> list[str]:
    """Keys of b that a lacks (recursively, over dicts both have)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return []
    found = [f"{where}.{k}".lstrip(".") for k in b.keys() - a.keys()]
    for key in a.keys() & b.keys():
        found += _new_keys(a[key], b[key], f"{where}.{key}")
    return found


def compare_file(old: Path, new: Path) -> tuple[str, str]:
    """(verdict, detail) of one output file present on both sides."""
    a, b = old.read_bytes(), new.read_bytes()
    if a == b:
        return "identical", ""
    volatile = VOLATILE | VOLATILE_IN.get(old.name, set())
    if old.suffix == ".csv":
        x, y = pd.read_csv(io.BytesIO(a)), pd.read_csv(io.BytesIO(b))
        common = [c for c in x.columns if c in y.columns and c not in volatile]
        added = [c for c in y.columns if c not in x.columns]
        gone = [c for c in x.columns if c not in y.columns]
        extra = "; ".join(
            p
            for p in (f"new columns: {_listed(added)}" if added else "", f"gone: {_listed(gone)}" if gone else "")
            if p
        )
        if len(x) != len(y):
            return "differs", f"{len(x)} vs {len(y)} rows"
        bad = [c for c in common if not x[c].equals(y[c])]
        if bad:
            return "differs", f"columns {_listed(bad)} (of {len(common)} shared)" + (f"; {extra}" if extra else "")
        skipped = [c for c in x.columns if c in volatile]
        return "same content", "; ".join(
            p for p in (extra, f"clock columns: {_listed(skipped)}" if skipped else "") if p
        )
    if old.suffix == ".json":
        x, y = json.loads(a), json.loads(b)
        bad = _differences(_drop_volatile(x, volatile), _drop_volatile(y, volatile))
        added = _new_keys(x, y)
        extra = f"new fields: {_listed(added)}" if added else ""
        if bad:
            return "differs", f"at {_listed(bad)}" + (f"; {extra}" if extra else "")
        return "same content", extra or "clock fields only"
    if old.suffix == ".npz":
        with np.load(old) as p, np.load(new) as q:
            if set(p.files) != set(q.files):
                return "differs", f"arrays {sorted(p.files)} vs {sorted(q.files)}"
            bad = [k for k in p.files if not np.array_equal(p[k], q[k])]
            return ("differs", f"arrays {bad}") if bad else ("same content", "same arrays (zip timestamps differ)")
    x, y = a.decode("utf-8", "replace").splitlines(), b.decode("utf-8", "replace").splitlines()
    first = next((i + 1 for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)) + 1)
    changed = sum(p != q for p, q in zip(x, y)) + abs(len(x) - len(y))
    return "differs", f"{changed} of {max(len(x), len(y))} lines, the first at line {first}"


def compare(old_out: Path, new_out: Path) -> list[tuple[str, str, str]]:
    """(file, verdict, detail) of every file either side wrote (the checkpoints in one row)."""

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    rows = []
    a, b = files(old_out), files(new_out)
    for name in sorted(a | b):
        if name.endswith((".pt", ".safetensors")) or "/checkpoints/" in f"/{name}":
            continue
        if name not in b:
            rows.append((name, "only old", ""))
        elif name not in a:
            rows.append((name, "only new", ""))
        else:
            rows.append((name, *compare_file(old_out / name, new_out / name)))
    ckpt_a = sorted(n for n in a if n.endswith(".pt"))
    ckpt_b = sorted(n for n in b if n.endswith(".pt"))
    if ckpt_a or ckpt_b:
        same = ckpt_a == ckpt_b and all((old_out / n).read_bytes() == (new_out / n).read_bytes() for n in ckpt_a)
        verdict = "identical" if same else "differs"
        rows.append(("checkpoints (*.pt)", verdict, f"{len(ckpt_a)} vs {len(ckpt_b)} files, byte by byte"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=OLD, help="the commit to compare with (default: %(default)s)")
    parser.add_argument("--old-tree", default="/tmp/cli_identity_old", help="its worktree (made once)")
    parser.add_argument("--work", default="/tmp/cli_identity", help="output folders of both sides (emptied)")
    parser.add_argument("--features", nargs="+", default=[c.feature for c in CASES], help="which commands")
    parser.add_argument(
        "--same-args", action="store_true", help="the new side's arguments on both sides (an old commit with its flags)"
    )
    args = parser.parse_args(argv)
    old_tree = ensure_tree(args.old, Path(args.old_tree))
    new_commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"CLI outputs: {args.old} (old) vs {new_commit}{' + uncommitted changes' if dirty else ''} (new); "
        f"one torch thread, CPU{'; the same arguments on both sides' if args.same_args else ''}",
        "",
        "| feature | file | verdict | detail |",
        "|---|---|---|---|",
    ]
    failed = False
    for case in (c for c in CASES if c.feature in args.features):
        timing = []
        for side, tree, cmd in (("old", old_tree, case.new if args.same_args else case.old), ("new", ROOT, case.new)):
            code, seconds = run_side(tree, cmd, work / side / case.feature, work / side / "cache")
            timing.append(f"{side} {seconds:.0f} s" + ("" if code == 0 else f" (exit {code})"))
            failed |= code != 0
        print(f"{case.feature}: {', '.join(timing)}", file=sys.stderr, flush=True)
        for name, verdict, detail in compare(work / "old" / case.feature, work / "new" / case.feature):
            failed |= verdict == "differs"
            lines.append(f"| {case.feature} | {name} | {verdict} | {detail} |")
        if case.note and not args.same_args:
            lines.append(f"| {case.feature} | (command) | | {case.note} |")
        lines.append(f"| {case.feature} | (run) | | `python -m engine {' '.join(case.new)}`; {', '.join(timing)} |")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
