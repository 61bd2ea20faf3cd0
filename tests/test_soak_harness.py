"""The soak harness (benchmarks/soak/) without a browser: its inputs, the server-side measurement, the
comparison with the work alone, the report, and the command's --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tiny_models

from benchmarks.soak import plan, server
from benchmarks.soak.reference import compare
from benchmarks.soak.report import report
from engine.core.limits import server_limits
from engine.core.queue import FairLock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.build_tokenizer()


def test_each_person_types_their_own_inputs():
    prompts = {plan.attention_prompt(i) for i in range(6)}
    assert len(prompts) == 6
    scans = [plan.scan_prompts(i) for i in range(6)]
    assert all(s[0] == scans[0][0] for s in scans) and len({s[1] for s in scans}) == 6  # the paper's + their own


@pytest.mark.parametrize("tokens", [5, 17, 40])
def test_fitted_text_has_exactly_the_token_count(tokenizer, tokens):
    text = plan.fitted_text(tokenizer, tokens, seed=3)
    assert plan.token_count(tokenizer, text) == tokens and "\n" not in text
    assert plan.fitted_text(tokenizer, tokens, seed=3) == text  # seeded


def test_upload_files_sit_on_each_side_of_the_limits(tmp_path):
    limits = dataclasses.replace(
        server_limits(), upload_bytes=30_000, question_chars=300, references_per_question=5, reference_chars=80
    )
    files = plan.upload_files(tmp_path, limits)
    size = {name: path.stat().st_size for name, path in files.items()}
    assert size["biggest"] <= limits.upload_bytes < size["too_big"]
    rows = {name: path.read_text().splitlines()[1:] for name, path in files.items()}
    assert max(len(r.split(",")[1]) for r in rows["biggest"]) <= limits.question_chars + 1  # the "?" added
    assert len(rows["long_question"][-1].split(",")[1]) == limits.question_chars + 1
    assert len(rows["many_references"][-1].split(",")[2].split("|")) == limits.references_per_question + 1
    assert len(rows["long_reference"][-1].split(",")[2]) == limits.reference_chars + 1
    assert len(rows["small"]) == 2


def _person(name: str) -> plan.Seen:
    person = plan.Seen(name, step="done", owners=["0123abcd"])
    person.attention = {"tokens": 12, "description": "a\nb", "top_heads": ["Top induction heads: 3.1"]}
    person.scan = {"candidates": ["layer 2 W[5, 7]"], "rejected": 1, "caption": "Rule: relative; stop: no spike"}
    person.uq = {"n": "5", "A1": "0.400", "A2": "0.500", "A3": "0.600"}
    person.grok = {"test_acc": "97.0%", "step": "600", "summary": "Grokked at step 550."}
    person.pickers = {"uncertainty": ["run 1 (yours)"], "grokking": ["run 2 (yours)"]}
    person.links = {"uncertainty run of P2": True}
    return person


def _alone() -> dict:
    return {
        "attention": {"tokens": 12, "description": "a\nb", "top_heads": ["Top induction heads: 3.1"]},
        "scan": {"candidates": ["layer 2 W[5, 7]"], "rejected": 1, "stop": "no spike"},
        "uq": {"n": "5", "A1": "0.400", "A2": "0.500", "A3": "0.600", "config_same": True, "files_same": True},
        "grok": {"config_same": True, "test_acc": "97.0%", "summary": "Grokked at step 550.", "files_same": True},
    }


def test_compare_says_same_different_or_not_compared():
    person = _person("P1")
    assert compare(person, _alone()) == {"attention": True, "scan": True, "uq": True, "grok": True}
    other = _alone()
    other["uq"]["A3"] = "0.610"
    other["grok"]["files_same"] = False
    del other["scan"]
    assert compare(person, other) == {"attention": True, "scan": None, "uq": False, "grok": False}


def test_report_counts_what_the_sessions_saw():
    people = [_person("P1"), _person("P2")]
    people[1].owners = ["4567ef01"]
    hostile = plan.Seen("H (hostile)", step="done")
    hostile.limits = [
        {"limit": "samples", "request": "K = 11", "expect": "refused, naming the limit", "ok": True, "seen": "x"},
        {"limit": "upload_bytes", "request": "big", "expect": "served", "ok": False, "seen": "y | z"},
    ]
    differs = _alone()
    differs["uq"]["A1"] = "0.100"
    refs = {"P1": _alone(), "P2": differs}
    server_numbers = {"hwm_kb": 2**20, "tree_kb": 2 * 2**20, "longest_wait_s": 4.25, "log_problems": ["traceback: E"]}
    text = report(
        plan.QUICK, people, hostile, refs, server_numbers, {"browser": 100}, (1.0, 2.0), "cmd", "now", "a machine"
    )
    assert text.startswith("# Soak test") and "`cmd` on now. Machine: a machine." in text
    assert "| every session finished its work | 3 of 3 |" in text
    assert "| the same numbers as alone (compared / same) | 8 / 7 |" in text
    assert "| the server's peak memory (VmHWM; with its training processes) | 1.00 GiB; 2.00 GiB |" in text
    assert "| the longest wait in a model's queue | 4.2 s |" in text
    assert "| the hostile session's requests answered as expected | 1 of 2 |" in text
    assert "- P2: uq differs from alone." in text and "- server log: traceback: E" in text
    assert "| upload_bytes | big | served | **NO** | y / z |" in text  # a | inside a cell would break the table
    assert "| grok_steps | not requested" in text  # every limit is listed


def test_server_stats_read_every_lock_and_the_garbage_collector():
    timer = server.GcTimer()
    timer("start", {"generation": 2})
    timer("stop", {"generation": 2})
    timer("start", {"generation": 0})
    timer("stop", {"generation": 0})
    assert timer.full == 1 and timer.longest_s <= timer.full_s <= sum(timer.windows.values())
    lock = FairLock()
    lock.acquire()
    waiting = threading.Thread(target=lambda: (lock.acquire(), lock.release()))
    waiting.start()
    while not lock._waiting:  # until the other thread queues
        threading.Event().wait(0.001)
    found = server.stats(timer)
    lock.release()
    waiting.join(5)
    assert found["locks"] >= 1 and found["longest_queue"] >= 2 and found["gc_full"] == 1
    assert server.stats(timer, longest_queue=9)["longest_queue"] == 9  # the most seen is kept


def test_the_servers_sitecustomize_installs_nothing_outside_the_server(tmp_path):
    site = server.site_dir(tmp_path / "site")
    code = "import gc, benchmarks.soak.server as s; print(len(gc.callbacks))"
    env = {"PYTHONPATH": f"{site}:{ROOT}", "LAB_SOAK_STATS": str(tmp_path / "stats.json"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0" and not (tmp_path / "stats.json").exists()  # not app.py: nothing installed


def test_log_problems_names_errors_and_sets_websocket_noise_apart():
    log = "\n".join(
        [
            "error 1a2b3c4d: ValueError: bad",
            "Traceback (most recent call last):",
            '  File "x.py", line 1',
            "ValueError: bad",
            "Traceback (most recent call last):",
            '  File "y.py", line 2',
            "tornado.websocket.WebSocketClosedError",
            "Traceback (most recent call last):",
            '  File "z.py", line 3',
            "KeyError: 'k'",
        ]
    )
    errors, disconnects = server.log_problems(log)
    assert errors == ["error 1a2b3c4d (shown to a user): ValueError: bad", "traceback: KeyError: 'k'"]
    assert disconnects == ["traceback: tornado.websocket.WebSocketClosedError"]


@pytest.mark.parametrize("command", [["-m", "benchmarks.soak"], [str(ROOT / "benchmarks" / "soak")]])
def test_the_command_runs_as_a_module_and_as_a_folder(command):
    out = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--minutes" in out.stdout and "Soak test of the shared lab server" in out.stdout
