"""benchmarks/cli_identity.py's comparison: a clock column or field is set aside, a new column or field is listed
and its shared content compared, and any changed shared value is caught (the harness can fail)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.cli_identity import compare, compare_file


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_identical_bytes_clock_columns_new_columns_and_a_changed_value(tmp_path):
    old = write(tmp_path / "old" / "metrics.csv", "step,acc,elapsed_s\n0,0.5,1.25\n10,0.75,2.5\n")
    assert compare_file(old, write(tmp_path / "same" / "metrics.csv", old.read_text())) == ("identical", "")
    clock = write(tmp_path / "clock" / "metrics.csv", "step,acc,elapsed_s\n0,0.5,1.5\n10,0.75,2.75\n")
    assert compare_file(old, clock) == ("same content", "clock columns: elapsed_s")
    wider = write(tmp_path / "wider" / "metrics.csv", "step,acc,elapsed_s,loss\n0,0.5,1.25,3\n10,0.75,2.5,2\n")
    assert compare_file(old, wider)[0] == "same content" and "new columns: loss" in compare_file(old, wider)[1]
    changed = write(tmp_path / "changed" / "metrics.csv", "step,acc,elapsed_s\n0,0.5,1.25\n10,0.7500001,2.5\n")
    assert compare_file(old, changed) == ("differs", "columns acc (of 2 shared)")


def test_json_fields_text_lines_arrays_and_files_on_one_side(tmp_path):
    old = write(tmp_path / "old" / "summary.json", json.dumps({"a": 1, "seconds": 2.0, "b": {"c": [1, 2]}}))
    new = write(tmp_path / "new" / "summary.json", json.dumps({"a": 1, "seconds": 9.0, "b": {"c": [1, 2], "d": 0}}))
    assert compare_file(old, new) == ("same content", "new fields: b.d")
    moved = write(tmp_path / "moved" / "summary.json", json.dumps({"a": 1, "seconds": 2.0, "b": {"c": [1, 3]}}))
    assert compare_file(old, moved) == ("differs", "at .b.c[1]")
    status_old = write(tmp_path / "old" / "status.json", json.dumps({"state": "finished", "time": 1.0}))
    status_new = write(tmp_path / "new" / "status.json", json.dumps({"state": "finished", "time": 2.0}))
    assert compare_file(status_old, status_new) == ("same content", "clock fields only")
    text = write(tmp_path / "old" / "stdout.txt", "n=2\nA1=0.5\n")
    assert compare_file(text, write(tmp_path / "new" / "stdout.txt", "n=2\nA1=0.6\n")) == (
        "differs",
        "1 of 2 lines, the first at line 2",
    )
    np.savez_compressed(tmp_path / "old" / "maps.npz", maps=np.eye(2))
    np.savez_compressed(tmp_path / "new" / "maps.npz", maps=np.eye(2) * 2)
    assert compare_file(tmp_path / "old" / "maps.npz", tmp_path / "new" / "maps.npz") == ("differs", "arrays ['maps']")
    write(tmp_path / "old" / "gone.csv", "a\n1\n")
    rows = {name: verdict for name, verdict, _ in compare(tmp_path / "old", tmp_path / "new")}
    assert rows["gone.csv"] == "only old" and rows["summary.json"] == "same content" and rows["maps.npz"] == "differs"
