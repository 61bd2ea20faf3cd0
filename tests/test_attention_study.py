"""The attention study: planted heads recovered by the detector, the probe and a perfect self-explainer
but not by the other-head control; the self-rule plumbing with a stub scorer; the paired statistics on
hand examples; the shared-prefix simulator and rule scorer against full forwards; bad input; the report;
a vision-language model shown the heatmap. Tiny models and test doubles only."""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest

from engine.attention import rules, self_explain, study
from engine.attention import study_stats as st
from engine.attention.maps import AttentionResult
from engine.attention.self_rule import RuleChoice, choose_rule, continuation_logprobs
from engine.attention.study_config import StudyConfig
from engine.attention.study_report import load_report, write_report
from engine.attention.study_result import StudyResult, build_result
from engine.core.errors import LabError

# ---------------------------------------------------------------------------------------------
# Planted heads (test doubles of the attention maps)

PLANTED = {0: "previous_token", 1: "bos_sink"}  # head 2 is random


def planted_result(seed: int, n: int = 14) -> AttentionResult:
    """One prompt of random tokens (some repeated), 1 layer x 3 heads: head 0 exactly previous-token,
    head 1 exactly BOS, head 2 a random causal softmax."""
    rng = np.random.default_rng(seed)
    ids = [2] + rng.integers(5, 30, size=n - 1).tolist()
    tokens = ["\u27e8bos\u27e9"] + [f"w{t}" if t % 7 else "." for t in ids[1:]]
    maps = np.zeros((1, 3, n, n), dtype=np.float32)
    maps[0, 0, 0, 0] = 1.0
    for i in range(1, n):
        maps[0, 0, i, i - 1] = 1.0
    maps[0, 1, :, 0] = 1.0
    logits = rng.normal(size=(n, n)) * 2
    logits[np.triu_indices(n, 1)] = -np.inf
    maps[0, 2] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return AttentionResult(
        "planted", "", ids, [f"\u0120{t}" for t in tokens], tokens, tokens, maps, ["full_attention"], 3, None, n, 64
    )


class PerfectSpeaker:
    """A self-explainer double that names each planted head's true rule and simulates it exactly; its
    scorer favours the previous-token rule text for every head."""

    def __new__(cls):
        truth = {**PLANTED, 2: "uniform"}
        favoured = " " + rules.RULE_TEXTS["previous_token"]
        return study.SelfExplainer(
            explain=lambda result, layer, head: (truth[head], "text"),
            simulate=lambda text, result, queries: rules.predict(
                text if text in rules.RULES else "uniform", result.token_ids, result.tokens, queries
            ),
            rule_prefix=lambda result, layer, head: f"head {layer}.{head}",
            scorer=lambda prefix, conts: [0.0 if c == favoured else -5.0 for c in conts],
        )


@pytest.fixture(scope="module")
def planted():
    train = [planted_result(s) for s in range(8)]
    heldout = [planted_result(100 + s) for s in range(10)]
    speaker = PerfectSpeaker()
    records = [study.study_head(0, h, train, heldout, train[0], 8, speaker) for h in range(3)]
    control = [
        speaker.simulate(self_explain.NO_EXPLANATION, r, q) for r, q in zip(heldout, study.heldout_queries(heldout, 8))
    ]
    heads = [(0, 0), (0, 1), (0, 2)]
    scores = study.score_heads(records, heldout, 8, control, study.other_head(heads, 0))
    return train, heldout, records, scores


def test_detector_and_probe_recover_planted_heads_on_heldout(planted):
    _, _, records, scores = planted
    top1, corr = scores.point()
    e = {name: k for k, name in enumerate(scores.explainers)}
    assert [r.detector for r in records[:2]] == ["previous_token", "bos_sink"]
    for head in (0, 1):
        assert top1[e["detector"], head] == pytest.approx(1.0)
        assert top1[e["probe"], head] >= 0.95
        assert corr[e["probe"], head] > 0.9
        assert top1[e["self-text"], head] == pytest.approx(1.0)  # the perfect explainer
        assert top1[e["control: other head"], head] < 0.3  # another head's explanation does not fit
        assert top1[e["control: no explanation"], head] < 0.3  # the double's prior is uniform
    assert top1[e["baseline: BOS"], 1] == 1.0 and top1[e["baseline: BOS"], 0] == pytest.approx(1 / 8)  # row 1 only


def test_self_rule_plumbing_with_a_stub_scorer(planted):
    _, heldout, records, scores = planted
    assert all(r.rule_choice.rule == "previous_token" for r in records)
    assert records[0].rule_choice.logprobs["previous_token"] == 0.0
    assert set(records[0].rule_choice.logprobs) == set(rules.RULES)
    top1, _ = scores.point()
    e = scores.explainers.index("self-rule")
    assert top1[e, 0] == pytest.approx(1.0) and top1[e, 1] == pytest.approx(1 / 8)  # BOS head: row 1 only
    choice = choose_rule("x", lambda prefix, conts: [len(c) == len(" " + rules.RULE_TEXTS["self"]) for c in conts])
    assert choice == RuleChoice("self", choice.logprobs) and choice.logprobs["self"] == 1.0


def test_result_statistics_and_report(planted, tmp_path):
    train, heldout, records, scores = planted
    config = StudyConfig(train=8, heldout=10, random=0, n_boot=500, heads=("0.0", "0.1", "0.2"))
    run = types.SimpleNamespace(
        lm=None, config=config, train=train, heldout=heldout, heads_how="3 planted heads", shape=(1, 3), mode="text"
    )
    result = build_result(run, records, scores, wall_seconds=1.0)
    names = [c["name"] for c in result.contrasts]
    assert names == [
        "top-1: self-text - better external",
        "top-1: self-text - control: no explanation",
        "top-1: self-text - control: other head",
        "self-rule agreement with the detector - chance",
    ]
    by = {c["name"]: c for c in result.contrasts}
    assert by["top-1: self-text - control: other head"]["estimate"] > 0.4
    assert result.agreement["agreement"] == pytest.approx(1 / 3)
    table = result.table()
    assert table.loc[0, "self_vs_control"] == "beats the control"
    assert result.min_p_times_family < 0.05
    delta = result.layers().query("explainer == 'self-text - better external'")
    means = table[["top1 self-text", "top1 detector", "top1 probe"]].mean()
    want = means["top1 self-text"] - max(means["top1 detector"], means["top1 probe"])
    assert delta["top1"].tolist() == pytest.approx([want])  # one layer: the verdict's contrast itself
    assert by["top-1: self-text - better external"]["estimate"] == pytest.approx(want)
    paths = write_report(result, tmp_path / "rep", reduced=True)
    assert {p.name for p in paths} >= {"summary.md", "atlas.png", "layers.png", "heads.csv", "atlas.json"}
    assert (tmp_path / "rep" / "summary.md").read_text().startswith("**REDUCED RUN, not the study:**")
    back = load_report(tmp_path / "rep")
    assert back.verdict == result.verdict and back.atlas().shape[0] == 3
    write_report(result, tmp_path / "rep" / "second_model", reduced=True)  # a second model's report inside
    write_report(result, tmp_path / "rep", reduced=False)  # rewriting the main report keeps it
    assert load_report(tmp_path / "rep" / "second_model") is not None
    result.save(tmp_path)
    assert StudyResult.load(tmp_path).contrasts[0]["estimate"] == pytest.approx(result.contrasts[0]["estimate"])


# ---------------------------------------------------------------------------------------------
# Statistics on hand examples


def test_prompt_stats_pool_to_score_prediction():
    rng = np.random.default_rng(0)
    patterns, preds = [], []
    for n in (5, 7):
        a = np.tril(rng.random((n, n)))
        patterns.append(a / a.sum(1, keepdims=True))
        preds.append({i: rng.dirichlet(np.ones(i + 1)) for i in range(1, n)})
    direct = self_explain.pooled_score(patterns, preds)
    top1, corr = st.scores_from_stats(sum(st.prompt_stats(a, p) for a, p in zip(patterns, preds)))
    assert top1 == pytest.approx(direct.top1) and corr == pytest.approx(direct.correlation)


def test_paired_statistics_match_a_hand_example():
    # 2 explainers x 1 head x 2 prompts: prompt credits (out of 1 row each) self (1, 0), other (0, 0)
    stats = np.zeros((2, 1, 2, len(st.STATS)))
    stats[:, :, :, 1] = 1.0  # one row per prompt
    stats[0, 0, 0, 0] = 1.0
    counts = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # three hand resamples
    top1, _ = st.boot_scores(stats, counts)
    assert top1[:, 0, 0].tolist() == [1.0, 0.0, 0.5] and top1[:, 1, 0].tolist() == [0.0, 0.0, 0.0]
    c = st.bootstrap_contrast("d", 0.5, top1[:, 0, 0] - top1[:, 1, 0])
    # d* = (1, 0, 0.5): #{<= 0} = 1, #{>= 0} = 3 -> p = 2 * (1 + 1) / 4 = 1.0
    assert c.p == 1.0 and c.ci_low == pytest.approx(np.percentile([1, 0, 0.5], 2.5))
    c = st.bootstrap_contrast("d", 0.5, np.array([0.2, 0.3, 0.1, 0.4]))
    assert c.p == pytest.approx(2 * 1 / 5)  # the smallest attainable: 2 / (B + 1)
    assert st.holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(st.holm([np.nan, 0.2])[0]) and st.holm([np.nan, 0.2])[1] == pytest.approx(0.2)
    a = st.agreement_vs_chance(["a", "a", "b", "b"], ["a", "b", "b", "b"], n_perm=200, seed=0)
    assert a["agreement"] == 0.75 and a["chance"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.75)
    assert 0 < a["p"] <= 1
    counts = st.resample_counts(5, 50, seed=1)
    assert counts.shape == (50, 5) and (counts.sum(1) == 5).all()


def test_rule_library_agrees_with_the_page_rules():
    t = [2, 5, 7, 8, 5, 9, 7, 8]
    toks = ["<bos>", "a", "b", ".", "a", "c", "b", "."]
    q = list(range(1, len(t)))
    for label in ("previous_token", "duplicate_token", "induction", "self", "bos_sink", "uniform"):
        mine, page = rules.predict(label, t, toks, q), self_explain.rule_prediction(label, t, q)
        assert all(np.allclose(mine[i], page[i]) for i in q), label
    assert int(np.argmax(rules.rule_weights("punctuation", t, toks, 5))) == 3
    assert int(np.argmax(rules.rule_weights("previous_2", t, toks, 1))) == 0  # no target: BOS
    assert rules.rule_weights("recent_window", t, toks, 6).tolist() == [0, 0, 0, 0.25, 0.25, 0.25, 0.25]


# ---------------------------------------------------------------------------------------------
# Model plumbing (tiny models)


def test_shared_prefix_simulator_and_rule_scorer_match_full_forwards(tiny_llama):
    import torch

    from engine.attention.maps import run_attention

    lm = tiny_llama
    res = run_attention(lm, "The cat sat on the mat. The cat")
    q = self_explain.query_positions(len(res.token_ids), 4)
    full = self_explain.simulate_with_lm(lm, "attends to the previous token", res, q)
    shared = self_explain.simulate_shared_prefix(lm, "attends to the previous token", res, q)
    assert all(np.allclose(full[i], shared[i], atol=1e-5) for i in q)
    prefix, conts = [2, 40, 41, 42], [[50, 51], [60], [70, 71, 72]]
    got = continuation_logprobs(lm, prefix, conts)
    for cont, lp in zip(conts, got):
        ids = torch.tensor([prefix + cont])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        want = [float(logp[len(prefix) - 1 + m, tok]) for m, tok in enumerate(cont)]
        assert lp == pytest.approx(want, abs=1e-4)


SMALL = dict(train=3, heldout=4, random=1, queries=2, max_tokens=10, max_new_tokens=2, n_boot=100)


def test_bad_input_is_a_lab_error(tiny_llama_dir, monkeypatch, tmp_path):
    from engine.core.loading import load_model

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(LabError, match="too small to split"):
        study.run_study(lm, StudyConfig(train=2, heldout=3, random=1))
    with pytest.raises(LabError, match="No head 9.0"):
        study.run_study(lm, StudyConfig(heads=("9.0",), **SMALL))
    sdpa = load_model(str(tiny_llama_dir), attn_implementation="sdpa")
    with pytest.raises(LabError, match="no attention weights"):
        study.run_study(sdpa, StudyConfig(heads=("0.0",), **SMALL))
    stop = threading.Event()
    stop.set()
    assert study.run_study(lm, StudyConfig(heads=("0.0",), **SMALL), stop=stop) is None
    assert not list(tmp_path.rglob("result_*.json"))  # nothing half-written is a result
    with pytest.raises(LabError, match="report-only"):
        study.run_study(lm, StudyConfig(heads=("0.0",), **SMALL), report_only=True)


def test_study_runs_and_resumes_on_a_vlm_shown_the_heatmap(tiny_vlm_dir, monkeypatch, tmp_path):
    from engine.core.loading import load_model

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    lm = load_model(str(tiny_vlm_dir))
    config = StudyConfig(heads=("1.0", "1.2"), **SMALL)
    calls = []
    result = study.run_study(lm, config, progress=lambda d, n, m: calls.append((d, n)))
    assert result.mode == "text+image" and result.table()["layer.head"].tolist() == ["1.0", "1.2"]
    assert calls[-1][0] == calls[-1][1]
    (folder,) = {p.parent for p in tmp_path.rglob("head_1.0.npz")}
    record = study.load_record(folder, 1, 0, study.heldout_queries(study.prepare(lm, config).heldout, 2))
    assert record.explain_mode == "text+image" and set(record.predictions) == set(study.HEAD_EXPLAINERS)
    again = study.run_study(lm, config, speaker=None)  # every head cached: no model call needed to finish
    assert again.table()["top1 self-text"].tolist() == pytest.approx(result.table()["top1 self-text"].tolist())
    assert study.cached_study(lm, config).verdict == result.verdict


def test_cli_names_a_bad_head(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    code = main(["attention-study", "--model", str(tiny_llama_dir), "--heads", "0.7", "--out", str(tmp_path / "r")])
    assert code == 2 and "No head 0.7" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rule_prompt_for_base_and_chat_models():
    from engine.attention.self_rule import rule_prompt

    base = rule_prompt(types.SimpleNamespace(is_instruction_tuned=False), "0 a -> a (1.00)")
    assert "0 a -> a (1.00)" in base and base.endswith(self_explain.COMPLETION_PREFIX)
    chat_lm = types.SimpleNamespace(is_instruction_tuned=True, chat_text=lambda text: f"<user>{text}<model>\n")
    chat = rule_prompt(chat_lm, "0 a -> a (1.00)")
    assert chat.startswith("<user>") and chat.endswith("<model>\n" + self_explain.COMPLETION_PREFIX)
    assert self_explain.EXPLAIN_CHAT_TEMPLATE.split("{description}")[0] in chat


def test_cli_writes_the_report(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    out = tmp_path / "rep"
    args = ["attention-study", "--model", str(tiny_llama_dir), "--heads", "0.0,1.1", "--out", str(out), "--quiet"]
    args += ["--train", "3", "--heldout", "4", "--random", "1", "--queries", "2", "--max-tokens", "10"]
    args += ["--max-new-tokens", "2", "--n-boot", "100"]
    assert main(args) == 0
    assert "At this model size" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary.startswith("**REDUCED RUN") and "--heads 0.0,1.1" in summary
    assert load_report(out).table()["layer.head"].tolist() == ["0.0", "1.1"]
    assert main(args + ["--report-only"]) == 0  # from the cached result: no explanation, no simulation


def test_prompt_sets_are_disjoint_and_mixed(tiny_llama):
    config = StudyConfig(train=20, heldout=15, random=3, max_tokens=24)
    train, heldout, description = study.study_prompts(tiny_llama.tokenizer, config)
    assert len(train) == 20 and len(heldout) == 15
    texts = [{p.text for p in side if p.text} for side in (train, heldout)]
    assert not texts[0] & texts[1] and len(texts[0]) == 17 and len(texts[1]) == 12
    randoms = [p.token_ids for side in (train, heldout) for p in side if p.kind == "repeated-random"]
    assert len(randoms) == 6 and len(set(randoms)) == 6
    for ids in randoms:  # BOS + a sequence + the same sequence again
        half = (len(ids) - 1) // 2
        assert ids[1 : 1 + half] == ids[1 + half :]
    sources = {p.name.split(": ")[1] for p in heldout if p.text}
    assert sources == {"prose", "questions", "attention set"}
    tail = description.token_ids[-2 * 8 :]
    assert tail[:8] == tail[8:] and len(description.token_ids) <= config.max_tokens
    again = study.study_prompts(tiny_llama.tokenizer, config)
    assert [p.text for p in again[1]] == [p.text for p in heldout]  # seeded: the same split every time
