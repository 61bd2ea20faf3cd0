"""The judges against hand marks (engine/uq/handmarks.py): the seeded sample, stratum-weighted agreement, marks
made in the lab; and the study's contrasts graded by the marks (engine/uq/marked_contrasts.py), with planted truth."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from engine.core.errors import LabError
from engine.uq import handmarks as hm
from engine.uq import marked_contrasts as mc
from engine.uq.config import MarkSample
from engine.uq.contrasts import planned

N = 400


def run_frame(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"q{i}" for i in range(N)]
    truth = rng.random(N) < 0.3
    contains = truth & (rng.random(N) < 0.8)  # misses some right answers
    f1 = truth | (rng.random(N) < 0.1)  # accepts some wrong ones
    verdicts = pd.DataFrame({"contains": contains, "f1": f1, "auto": contains | f1}, index=ids).astype(object)
    verdicts.iloc[:10] = None  # ungraded (no reference)
    answers = pd.Series([f"answer {i}" for i in range(N)], index=ids)
    return answers, verdicts, pd.Series(truth, index=ids)


def test_seeded_sample_of_150_plus_disagreements():
    answers, verdicts, _ = run_frame()
    sample = hm.draw_sample(answers, verdicts, n_random=150, n_disagreement=20, seed=3)
    assert list(sample.columns) == list(hm.SAMPLE_COLUMNS)
    assert (sample["stratum"] == "random").sum() == 150 and (sample["stratum"] == "disagreement").sum() == 20
    differs = hm.disagreement(verdicts)
    assert differs[sample.loc[sample["stratum"] == "disagreement", "question_id"]].all()
    assert not sample["question_id"].isin([f"q{i}" for i in range(10)]).any()  # ungraded answers never drawn
    again = hm.draw_sample(answers, verdicts, n_random=150, n_disagreement=20, seed=3)
    pd.testing.assert_frame_equal(sample, again)  # seeded
    with pytest.raises(LabError, match="390 graded answers"):
        hm.draw_sample(answers, verdicts, n_random=500)


def test_weighted_agreement_and_too_few_marks():
    answers, verdicts, truth = run_frame(1)
    sample = hm.draw_sample(answers, verdicts, n_random=150, n_disagreement=60, seed=0)
    marks = sample.assign(mark=truth[sample["question_id"]].to_numpy())[list(hm.MARK_COLUMNS)]
    table, note = hm.judge_agreement(marks, answers, verdicts)
    assert note == "" and list(table["judge"]) == ["contains", "f1", "auto"]
    # weighted accuracy estimates the whole run's agreement, not the oversampled sample's
    graded = verdicts.index[verdicts["f1"].notna()]
    run_accuracy = float((verdicts.loc[graded, "f1"].astype(bool) == truth[graded]).mean())
    f1 = table.set_index("judge").loc["f1"]
    assert f1["accuracy"] == pytest.approx(run_accuracy, abs=0.03)
    unweighted = cohen_kappa_score(marks["mark"], verdicts.loc[marks["question_id"], "f1"].astype(bool))
    assert f1["kappa"] != pytest.approx(unweighted, abs=1e-9)  # the strata weights matter
    few, _ = hm.judge_agreement(marks.iloc[:12], answers, verdicts)
    assert few["kappa"].isna().all() and few["note"].str.startswith(hm.TOO_FEW).all()
    wrong_answer = marks.copy()
    wrong_answer.loc[wrong_answer.index[0], "answer"] = "something else"
    _table, note = hm.judge_agreement(wrong_answer, answers, verdicts)
    assert note.startswith("1 mark(s) left out")


def test_marks_file_is_read_and_checked(tmp_path):
    path = tmp_path / "marks.csv"
    path.write_text("question_id,answer,mark\nq1,Paris,true\nq2,Rome,0\n")
    marks = hm.read_marks(path)
    assert marks["mark"].tolist() == [True, False]
    path.write_text("question_id,answer,mark\nq1,Paris,maybe\n")
    with pytest.raises(LabError, match="mark 'maybe'"):
        hm.read_marks(path)
    path.write_text("question_id,mark\nq1,true\n")
    with pytest.raises(LabError, match="lacks the column"):
        hm.read_marks(path)


# ---------------------------------------------------------------- the contrasts graded by hand marks

SPECS = [s for s in planned() if s.family in mc.FAMILIES]


def planted_scores(truth: pd.Series, judge: pd.Series, seed: int = 0) -> pd.DataFrame:
    """Every contrast column as noise, except: the discriminant's semantic spread ranks the answers that are
    truly wrong high; the lexical map's semantic spread ranks those the judge calls wrong high."""
    rng = np.random.default_rng(seed)
    columns = sorted({c for s in SPECS for c in (s.enhanced, s.baseline)})
    scores = pd.DataFrame(rng.normal(size=(len(truth), len(columns))), index=truth.index, columns=columns)
    scores["discriminant_semantic_spread"] = (~truth.astype(bool)) * 1.5 + rng.normal(size=len(truth))
    scores["lexical_map_semantic_spread"] = (~judge.astype(bool)) * 3.0 + rng.normal(size=len(truth))
    return scores


def _auroc_difference(scores, ids, labels, enhanced, baseline):
    wrong = ~labels[ids].astype(bool).to_numpy()
    return roc_auc_score(wrong, scores.loc[ids, enhanced]) - roc_auc_score(wrong, scores.loc[ids, baseline])


def test_contrasts_are_graded_by_the_hand_marks_on_the_random_sample_and_on_all():
    answers, verdicts, truth = run_frame(2)
    graded = verdicts.index[verdicts["auto"].notna()]
    judge = verdicts["contains"]  # the automatic judge: misses a fifth of the right answers
    scores = planted_scores(truth, judge.fillna(False))
    sample = hm.draw_sample(answers, verdicts, n_random=150, n_disagreement=60, seed=1)
    marks = sample.assign(mark=truth[sample["question_id"]].to_numpy()).set_index("question_id")
    random_part, everything = mc.marked_contrasts(scores.loc[graded], marks, sample, judge=judge)
    assert (random_part.part, random_part.n, everything.n) == ("random sample", 150, len(sample))
    assert "disagreement stratum is left out" in random_part.note and "over-samples" in everything.note
    rows = {r["name"]: r for r in random_part.rows}
    assert [r["family"] for r in random_part.rows] == [s.family for s in SPECS]
    random_ids = sample.loc[sample["stratum"] == "random", "question_id"]
    planted = rows["spread, discriminant: semantic subspace vs full state"]
    expected = _auroc_difference(scores, random_ids, truth, "discriminant_semantic_spread", "full_state_spread")
    assert planted["estimate"] == pytest.approx(expected, abs=1e-12)  # the hand marks are the label
    assert planted["p_holm"] < 0.001 and planted["mde"] > 0 and planted["ci_high"] - planted["ci_low"] > 0
    assert random_part.verdict.answer == "useful" and random_part.verdict.best == planted["name"]
    nulls = [r for r in random_part.rows if r["family"] == "primary" and "spread" not in r["name"]]
    assert all(r["p_holm"] > 0.05 for r in nulls)
    # the judge's table on the same answers uses the judge's verdicts as the label
    judged = {r["name"]: r for r in random_part.judge_rows}
    lexical = "spread, lexical_map: semantic subspace vs full state"
    assert judged[lexical]["estimate"] == pytest.approx(
        _auroc_difference(scores, random_ids, judge.astype(bool), "lexical_map_semantic_spread", "full_state_spread"),
        abs=1e-12,
    )
    assert judged[lexical]["estimate"] > rows[lexical]["estimate"] + 0.05  # it tracks the judge, not the truth
    text = mc.part_markdown(random_part)
    assert "| primary | spread, discriminant: semantic subspace vs full state |" in text and "auto judge" in text


def test_contrasts_refuse_too_few_marks_of_a_class():
    answers, verdicts, truth = run_frame(3)
    sample = hm.draw_sample(answers, verdicts, n_random=40, n_disagreement=0, seed=0)
    ids = sample["question_id"]
    scores = planted_scores(truth, truth)
    marks = pd.DataFrame({"mark": [True] * 35 + [False] * 5}, index=ids)
    with pytest.raises(LabError, match="Too few hand marks for an AUROC in the random sample: 35 marked right and 5"):
        mc.marked_contrasts(scores, marks, sample)
    with pytest.raises(LabError, match="have no scores"):
        mc.part_contrasts(scores.drop(index=ids.iloc[0]), marks["mark"], "all marked")


# ---------------------------------------------------------------- a run on disk, marks made in the lab


class HashEmbedder:
    """A stand-in sentence embedder: one seeded unit vector per text (equal texts: cosine 1)."""

    def encode(self, texts, **_kw):
        rows = []
        for text in texts:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).normal(size=16)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


def fake_run(n: int = 90):
    """A finished run of `n` questions (no model): every third answer right, every third wrong, every third
    names the reference among many other words (containment right, token F1 wrong: the judges disagree)."""
    from engine.uq.config import GenerationConfig
    from engine.uq.records import QuestionRecord
    from engine.uq.store import open_run

    ids = [f"q{i:03d}" for i in range(n)]
    refs = [[f"alpha {i} omega"] for i in range(n)]
    questions = pd.DataFrame({"id": ids, "question": [f"Which one is {i}?" for i in range(n)], "references": refs})
    run = open_run("fake-model", questions, GenerationConfig(samples=1, hidden_layers=[1]), source="fake.csv")
    for i, qid in enumerate(ids):
        answer = [f"alpha {i} omega", "nothing at all", f"it is alpha {i} omega and many other words here"][i % 3]
        record = QuestionRecord(
            qid,
            questions["question"][i],
            refs[i],
            answer,
            [-0.1],
            np.zeros((1, 2), np.float32),
            ["s"],
            [[-0.1]],
            np.zeros((1, 1, 2), np.float32),
            hidden_layers=[1],
        )
        run.write_record(i, record)
    return run


def test_the_command_grades_the_contrasts_by_a_marks_file(tmp_path, monkeypatch, capsys):
    from engine.cli import main
    from engine.commands import uq as uq_command

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(uq_command, "load_embedder", HashEmbedder)
    run = fake_run()
    records = run.load_records()
    truth = pd.Series([i % 3 != 1 for i in range(len(records))], index=[r.id for r in records])
    judge = pd.Series([i % 3 == 0 for i in range(len(records))], index=truth.index)  # the auto judge, strict
    results = planted_scores(truth, judge).assign(answer=[r.answer for r in records], correct=judge)
    results.rename_axis("id").to_csv(tmp_path / "results.csv")
    marks = pd.DataFrame({"question_id": truth.index, "answer": results["answer"], "mark": truth.to_numpy()})
    marks.to_csv(tmp_path / "marks.csv", index=False)
    argv = ["uq-marks", "contrasts", "--run", run.run_id, "--marks", str(tmp_path / "marks.csv")]
    argv += ["--results", str(tmp_path / "results.csv"), "--n", "60", "--disagreements", "10"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "**random sample**, n = 60" in out and "**all marked**, n = 90" in out
    assert "Graded by the hand marks: Useful at n = 60: spread, discriminant" in out
    few = marks.assign(mark=[True] * 85 + [False] * 5)
    few.to_csv(tmp_path / "few.csv", index=False)
    assert main([*argv[:5], str(tmp_path / "few.csv"), *argv[6:]]) == 2
    assert "Too few hand marks for an AUROC" in capsys.readouterr().err
    other = results.assign(answer="something else")
    other.rename_axis("id").to_csv(tmp_path / "other.csv")
    assert main([*argv[:7], str(tmp_path / "other.csv"), *argv[8:]]) == 2
    assert "is not this run's" in capsys.readouterr().err


def test_marks_made_in_the_lab_are_private_to_each_person_and_kept(tmp_path, monkeypatch):
    from engine.core.db import lab_db

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = fake_run(6)
    hm.save_hand_marks(run, "bob", {"q000": ("alpha 0 omega", False, "bob")})  # no owner: bob's own file
    assert hm.hand_marks_path(run, "bob") == run.path / "hand_marks" / "bob.csv" and hm.load_hand_marks(run).empty
    lab_db().claim_run("uq", run.run_id, "alice")
    with pytest.raises(LabError, match="someone else's private run"):
        hm.save_hand_marks(run, "bob", {"q000": ("alpha 0 omega", True, "")})
    with pytest.raises(LabError, match="Not a person's id"):
        hm.hand_marks_path(run, "../alice")
    hm.save_hand_marks(run, "alice", {"q000": ("alpha 0 omega", True, ""), "q001": ("nothing at all", False, "x")})
    hm.save_hand_marks(run, "alice", {"q001": ("nothing at all", True, "on second thought")})
    marks = hm.load_hand_marks(run, "alice")
    assert marks.to_dict("records") == [
        {"question_id": "q000", "answer": "alpha 0 omega", "mark": True, "note": ""},
        {"question_id": "q001", "answer": "nothing at all", "mark": True, "note": "on second thought"},
    ]
    pd.testing.assert_frame_equal(hm.load_hand_marks(run), marks)  # the owner's file: hand_marks.csv
    pd.testing.assert_frame_equal(hm.read_marks(hm.hand_marks_path(run))[list(hm.FILE_COLUMNS)].fillna(""), marks)
    hm.save_hand_marks(run, "alice", {"q000": ("alpha 0 omega", None, "")})
    assert list(hm.load_hand_marks(run, "alice")["question_id"]) == ["q001"]
    lab_db().set_shared("uq", run.run_id, "alice", True)  # shared: bob reads it, and marks it in his own file
    hm.save_hand_marks(run, "bob", {"q001": ("nothing at all", False, "")})
    assert hm.load_hand_marks(run, "bob")[["question_id", "mark", "note"]].values.tolist() == [
        ["q000", False, "bob"],
        ["q001", False, ""],
    ]
    assert hm.load_hand_marks(run, "alice")["mark"].tolist() == [True]


def test_the_draws_settings_are_checked():
    with pytest.raises(LabError, match="random sample size must be between 1 and 100,000"):
        MarkSample(n_random=0).validate()
    answers, verdicts, _ = run_frame()
    sample = hm.sample_for(answers, verdicts, MarkSample(n_random=20, n_disagreement=5, sample_seed=4))
    pd.testing.assert_frame_equal(sample, hm.draw_sample(answers, verdicts, n_random=20, n_disagreement=5, seed=4))


# ---------------------------------------------------------------- the study's report on a marks file


def _fake_study(tmp_path, monkeypatch):
    """A finished fake run as the study's WebQuestions set, its evaluation (planted scores: the discriminant's
    semantic spread finds the truly wrong answers), and the marks of every answer in OUT/hand_marks."""
    import types

    from engine.uq import study

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(study, "load_embedder", HashEmbedder)
    run = fake_run(240)  # the default draw: 150 at random, 50 more where the judges disagree
    records = run.load_records()
    ids = [r.id for r in records]
    truth = pd.Series([i % 3 != 1 for i in range(len(ids))], index=ids)
    judge = pd.Series([i % 3 == 0 for i in range(len(ids))], index=ids)
    results = planted_scores(truth, judge).assign(answer=[r.answer for r in records], correct=judge)
    evaluation = types.SimpleNamespace(records=records, results=results.rename_axis("id").reset_index())
    out = tmp_path / "report"
    (out / "hand_marks").mkdir(parents=True)
    pd.DataFrame({"question_id": ids, "answer": results["answer"], "mark": truth.to_numpy()}).to_csv(
        out / "hand_marks" / "marks.csv", index=False
    )
    (out / "hand_marks" / "marker_notes.md").write_text("- **Who marked:** a test fixture (planted), blind.\n")
    (out / "hand_marks" / "agreement.md").write_text("# how\n")
    entry = study.StudySet("webquestions", "WebQuestions", "fake", run.run_id, len(ids))
    return out, [(entry, run, evaluation)], truth


def test_the_report_writes_the_hand_marks_paragraph_from_the_marks_file(tmp_path, monkeypatch):
    from engine.uq import report, study
    from engine.uq.config import EvalOptions

    out, evaluations, truth = _fake_study(tmp_path, monkeypatch)
    path = study.hand_marks_path(study.StudyConfig(out=str(out)))
    assert path == out / study.HAND_MARKS
    check = study.check_exploration_marks(path, evaluations, EvalOptions())
    assert (check.n_marked, check.n_right, check.error) == (240, 160, "")
    random_part = check.part("random sample")
    assert (random_part.n, check.part("all marked").n) == (MarkSample().n_random, 240)
    name = "spread, discriminant: semantic subspace vs full state"
    plan = {"contrast": {"name": name}}
    confirmed = {"sentence": "Useful: on the unseen confirmation questions ..."}
    text = "\n".join(report.hand_marks_section(check, out, plan, confirmed))
    best = check.agreement.sort_values("kappa", ascending=False).iloc[0]
    assert f"The `{best['judge']}` judge agrees best with 240 answers marked blind" in text
    assert f"accuracy {best['accuracy']:.2f}, stratum-weighted Cohen's kappa {best['kappa']:.2f}" in text
    assert "by a test fixture: [hand_marks/agreement.md](hand_marks/agreement.md)" in text
    focal = next(r for r in random_part.rows if r["name"] == name)
    assert focal["p_holm"] < 0.05 and "the confirmed contrast holds" in text
    row = (
        f"| exploration, random sample of the marked answers | hand marks | {random_part.n} ({random_part.n_right} / "
        f"{random_part.n_wrong}) | {name} | {focal['estimate']:+.3f} | [{focal['ci_low']:+.3f}, "
        f"{focal['ci_high']:+.3f}] | {focal['p']:.3g} | {focal['p_holm']:.3g} | {focal['mde']:.3f} |"
    )
    assert row in text
    # the whole report carries it right after the answer; 'none' leaves it out; a missing named file is refused
    whole = report.summary_report({}, [], [], seconds={}, report_machine={}, plan=None, hand_marks=check, out=out)
    assert whole.index("**Against hand marks.**") < whole.index("## Pre-registered contrasts")
    assert study.hand_marks_path(study.StudyConfig(out=str(out), hand_marks="none")) is None
    with pytest.raises(LabError, match="No hand marks file"):
        study.hand_marks_path(study.StudyConfig(out=str(out), hand_marks=str(tmp_path / "missing.csv")))
    assert study.hand_marks_path(study.StudyConfig(out=str(tmp_path / "elsewhere"))) is None


def test_the_report_says_why_too_few_marks_grade_no_contrast(tmp_path, monkeypatch):
    from engine.uq import report, study
    from engine.uq.config import EvalOptions

    out, evaluations, _truth = _fake_study(tmp_path, monkeypatch)
    marks = hm.read_marks(out / study.HAND_MARKS)
    marks.assign(mark=[True] * 235 + [False] * 5).to_csv(tmp_path / "few.csv", index=False)
    path = study.hand_marks_path(study.StudyConfig(out=str(out), hand_marks=str(tmp_path / "few.csv")))
    check = study.check_exploration_marks(path, evaluations, EvalOptions())
    assert check.parts == [] and "Too few hand marks for an AUROC" in check.error
    text = "\n".join(report.hand_marks_section(check, out, None, None))
    assert "The contrasts are not graded by them: Too few hand marks" in text and "| set |" not in text
