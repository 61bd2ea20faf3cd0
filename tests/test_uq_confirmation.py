"""Explore, then confirm (engine/uq/confirmation.py): the fixed contrast, its hash, one test on unseen questions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_uq_metrics import evaluation_records

from engine.core.errors import LabError
from engine.uq import confirmation as conf
from engine.uq.config import EvalOptions
from engine.uq.estimators import scoring_stats


def contrasts():
    row = {"family": "primary", "metric": "auroc", "one_sided": True, "ci_low": -0.1, "ci_high": 0.2, "p": 0.2}
    return [
        {
            **row,
            "name": "spread, discriminant: semantic subspace vs full state",
            "enhanced": "discriminant_semantic_spread",
            "baseline": "full_state_spread",
            "estimate": 0.05,
            "p_holm": 0.3,
        },
        {
            **row,
            "name": "spread, lexical_map: semantic subspace vs full state",
            "enhanced": "lexical_map_semantic_spread",
            "baseline": "full_state_spread",
            "estimate": 0.01,
            "p_holm": 0.9,
        },
    ]


def test_the_plan_is_fixed_once_with_a_hash_and_guards_the_confirmation(tmp_path):
    plan = conf.fix_contrast(tmp_path, contrasts(), run_id="r1", n=24, judge="auto")
    assert plan["contrast"]["enhanced"] == "discriminant_semantic_spread"  # the smallest Holm p
    assert plan["hash"] == conf.contrast_hash(plan["contrast"]) and len(plan["hash"]) == 64
    later = contrasts()[::-1]
    later[1]["p_holm"] = 0.99
    assert conf.fix_contrast(tmp_path, later, run_id="r2", n=24, judge="auto") == plan  # never re-chosen
    with pytest.raises(LabError, match="refusing to confirm 'something else'"):
        conf.check_request(plan, tmp_path, "something else")
    conf.check_request(plan, tmp_path, plan["contrast"]["name"])  # the fixed one is fine
    conf.write_result(tmp_path, {"sentence": "x"})
    with pytest.raises(LabError, match="already ran"):
        conf.check_request(plan, tmp_path)
    with pytest.raises(LabError, match="already ran"):
        conf.write_result(tmp_path, {"sentence": "y"})
    edited = json.loads((tmp_path / conf.PLAN).read_text())
    edited["contrast"]["baseline"] = "mean_token_nll"
    (tmp_path / conf.PLAN).write_text(json.dumps(edited))
    with pytest.raises(LabError, match="does not match its hash"):
        conf.read_plan(tmp_path)


def test_confirmation_questions_never_fit_anything(embedder):
    """Fixed folds: flipping the confirmation questions' labels leaves their probe scores unchanged."""
    records = evaluation_records(30)
    folds = np.r_[np.full(20, -1), np.zeros(10, dtype=int)]
    labels = np.array([float(i % 3 == 0) for i in range(30)])
    flipped = labels.copy()
    flipped[20:] = 1 - flipped[20:]
    column = "correctness_probe_discriminant_semantic"
    a = scoring_stats(records, embedder, folds=folds, correct=labels).score([column, "se_probe_full_state"])
    b = scoring_stats(records, embedder, folds=folds, correct=flipped).score([column, "se_probe_full_state"])
    assert np.isnan(a.scores[column].to_numpy()[:20]).all()  # exploration questions are only trained on
    assert a.scores[column].iloc[20:].notna().all()
    np.testing.assert_allclose(a.scores[column].iloc[20:], b.scores[column].iloc[20:])


def test_one_test_on_the_confirmation_set(embedder):
    contrast = {k: contrasts()[0][k] for k in conf.SPEC_KEYS}
    result = conf.confirm_contrast(
        evaluation_records(24), evaluation_records(18), contrast, EvalOptions(n_seeds=2, n_boot_test=2000), embedder
    )
    test = result["test"]
    assert test["family"] == "confirmation" and test["one_sided"] and test["method"] == "delong"
    assert test["p_holm"] == test["p"] and np.isfinite(test["estimate"]) and test["n"] == result["n_graded"]
    assert test["n_seeds"] == 2 and result["acc50"]["metric"] == "acc50"
    assert result["sentence"].split(":")[0] in ("Useful", "Not useful", "Inconclusive")
    assert "minimal detectable effect" in result["sentence"] and result["hash"] == conf.contrast_hash(contrast)
    assert 0 <= result["A3_decomposition"] <= 1 and result["n_exploration"] == 24


def test_the_report_leads_with_the_seed_answer_and_the_confirmation_sentence():
    from engine.uq.report import seed_answer

    contrast = {k: contrasts()[0][k] for k in conf.SPEC_KEYS}
    plan = {"contrast": contrast, "hash": conf.contrast_hash(contrast)}
    confirmed = {
        "contrast": contrast,
        "hash": plan["hash"],
        "n_graded": 1032,
        "n_exploration": 1000,
        "judge": "auto",
        "A1": 0.12,
        "A2": 0.2,
        "A3": 0.21,
        "A3_decomposition": 0.22,
        "A3_baseline": 0.2,
        "sentence": "Inconclusive: numbers",
    }
    text = "\n".join(seed_answer([], plan, confirmed))
    for part in ("**A1** = 0.120", "**A2** = 0.200", "**A3** = 0.210", "**A3 with the decomposition** = 0.220"):
        assert part in text
    assert "**Inconclusive: numbers**" in text and plan["hash"][:12] in text
    pending = "\n".join(seed_answer([], plan, None))
    assert "Not confirmed yet" in pending and contrast["name"] in pending
