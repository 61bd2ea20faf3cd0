"""The judges against hand marks (engine/uq/handmarks.py): the seeded sample and stratum-weighted agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from engine.core.errors import LabError
from engine.uq import handmarks as hm

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
