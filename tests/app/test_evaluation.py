"""Evaluation helpers: gold/RM scores on the policy's samples, KL to a reference, win rate, perplexity."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from llm_gym import (
    GoldScorer,
    Policy,
    PolicyReport,
    PretrainReport,
    SamplingConfig,
    SyntheticOracle,
    TinyLMConfig,
    evaluate_policy,
    generate_review_task,
    kl_to_reference,
    perplexity,
    win_rate,
)
from llm_gym.agents.best_of_n import BestOfN, BestOfNConfig, best_of_n_kl
from llm_gym.models.policy import Rollout

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is"]


def length_scorer(prompts, completions):
    return np.array([float(len(c)) for c in completions])


def test_report_fields_match_direct_computation(policy: Policy) -> None:
    sampling = SamplingConfig(max_new_tokens=12)
    heldout = generate_review_task(TinyLMConfig.smoke().task).heldout_texts[:20]
    judge = SyntheticOracle(GoldScorer(), rng=np.random.default_rng(0), temperature=0.0)
    rep = evaluate_policy(policy, PROMPTS, sampling=sampling, seed=3, gold_fn=GoldScorer(), reward_fn=length_scorer,
                          reference=policy, oracle=judge, heldout_texts=heldout, batch_size=3)
    completions = policy.sample(PROMPTS[:3], sampling, seed=3).completions + policy.sample(PROMPTS[3:], sampling, seed=6).completions
    assert rep.gold == pytest.approx(GoldScorer()(PROMPTS, completions).mean())
    assert rep.rm_score == pytest.approx(np.mean([len(c) for c in completions]))
    assert rep.kl == pytest.approx(0.0, abs=1e-5), "a policy has zero KL to itself"
    assert rep.win_rate == 0.5, "the same seeds give the same completions: every pair ties"
    assert rep.perplexity == pytest.approx(perplexity(policy.model, policy.tokenizer, heldout))
    assert 0 < rep.mean_tokens <= 12
    bare = evaluate_policy(policy, PROMPTS, sampling=sampling)
    assert bare.gold is None and bare.kl is None and bare.win_rate is None and bare.perplexity is None


def test_win_rate_counts_wins_and_ties() -> None:
    judge = SyntheticOracle(length_scorer, rng=np.random.default_rng(0), temperature=0.0)
    rate = win_rate(["p"] * 4, [" long answer", " x", " same", " longer one"], [" x", " long answer", " same", " y"], judge)
    assert rate == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="same length"):
        win_rate(["p"], [" a", " b"], [" c"], judge)


def test_evaluate_needs_prompts(policy: Policy) -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate_policy(policy, [])


# --------------------------------------------------------------------------- anything that samples: best-of-N


def _perturbed(tiny_model: PretrainReport) -> Policy:
    """Another policy of the same architecture: the same weights plus a little noise (a reference that is not the base)."""
    other = Policy.from_pretrained(tiny_model.path, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return other


def test_best_of_n_reports_its_analytic_kl_to_the_base(policy: Policy) -> None:
    sampling = SamplingConfig(max_new_tokens=12)
    for n in (1, 4):
        bon = BestOfN(policy, length_scorer, BestOfNConfig(n=n), rng=np.random.default_rng(0))
        rep = evaluate_policy(bon, PROMPTS, sampling=sampling, seed=3, reference=policy, batch_size=3)
        assert rep.kl == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-6)
        assert rep.kl == pytest.approx(best_of_n_kl(n), abs=1e-6)


def test_best_of_n_on_the_gold_scorer_beats_the_base_policy_on_gold(policy: Policy) -> None:
    """N = 8 selected by the gold scorer: at least the base's gold on the same prompts and seed (the first candidate
    of each prompt is the base's own sample with that seed, so this holds prompt by prompt, not only on average)."""
    sampling = SamplingConfig(max_new_tokens=12)
    gold = GoldScorer()
    bon = BestOfN(policy, gold, BestOfNConfig(n=8), rng=np.random.default_rng(0))
    base = evaluate_policy(policy, PROMPTS, sampling=sampling, seed=3, gold_fn=gold)
    best = evaluate_policy(bon, PROMPTS, sampling=sampling, seed=3, gold_fn=gold)
    assert best.gold >= base.gold
    assert best.gold > base.gold, "eight tries at the gold scorer should find something better on some prompt"
    per_prompt_base = gold(PROMPTS, policy.sample(PROMPTS, sampling, seed=3).completions)
    per_prompt_best = gold(PROMPTS, bon.sample(PROMPTS, sampling, seed=3).completions)
    assert (per_prompt_best >= per_prompt_base).all()


def test_best_of_n_goes_through_the_same_code_as_a_policy(policy: Policy, tiny_model: PretrainReport) -> None:
    """Best-of-1 is the base policy: every field of its report equals the policy's, KL to another reference included."""
    sampling = SamplingConfig(max_new_tokens=12)
    heldout = generate_review_task(TinyLMConfig.smoke().task).heldout_texts[:20]
    reference = _perturbed(tiny_model)
    kwargs = {"sampling": sampling, "seed": 3, "gold_fn": GoldScorer(), "reward_fn": length_scorer, "reference": reference,
              "heldout_texts": heldout, "batch_size": 3}

    def judge() -> SyntheticOracle:  # a fresh one per evaluation: the oracle's rng moves on as it answers
        return SyntheticOracle(GoldScorer(), rng=np.random.default_rng(0), temperature=0.0)

    as_policy = evaluate_policy(policy, PROMPTS, oracle=judge(), **kwargs)
    bon = BestOfN(policy, length_scorer, BestOfNConfig(n=1), rng=np.random.default_rng(0))
    as_bon = evaluate_policy(bon, PROMPTS, oracle=judge(), **kwargs)
    assert as_bon == as_policy
    assert as_policy.kl > 0.01, "the perturbed reference is another distribution"
    # best-of-4 against the same reference: the analytic KL to the base plus the base's KL to the reference,
    # averaged over the selected completions (the chain rule)
    bon4 = BestOfN(policy, length_scorer, BestOfNConfig(n=4), rng=np.random.default_rng(0))
    rollouts = [bon4.sample(PROMPTS[:3], sampling, seed=3), bon4.sample(PROMPTS[3:], sampling, seed=6)]
    rep = evaluate_policy(bon4, PROMPTS, **kwargs)
    assert rep.kl == pytest.approx(best_of_n_kl(4) + kl_to_reference(policy, reference, rollouts, sampling), abs=1e-6)


def test_evaluate_refuses_what_does_not_sample(policy: Policy) -> None:
    with pytest.raises(TypeError, match=r"CompletionSampler .* got str; for an on-policy agent .* pass agent.policy"):
        evaluate_policy("gpt2", PROMPTS)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- verifiable answers: accuracy and pass@k


class AnswerJudge:
    """A gold judge that verifies answers: 1.0 when (prompt, completion) is one of the correct pairs, else 0.0."""

    verifies_answers = True

    def __init__(self, correct: set[tuple[str, str]]) -> None:
        self.correct = correct

    def __call__(self, prompts, completions):
        return np.array([float((p, c) in self.correct) for p, c in zip(prompts, completions)])


class ScriptedSampler:
    """A `CompletionSampler` whose completions are known in advance: " greedy" under top_k=1, else " s<id>" where the
    id is the batch's seed plus the prompt's place in the batch (so each of evaluation's draws has its own id)."""

    model = None  # no model underneath: only perplexity (not asked for here) would use it
    tokenizer = None

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int | None]] = []  # (batch size, top_k, seed) per sample call

    def sample(self, prompts, config=SamplingConfig(), seed=None) -> Rollout:
        self.calls.append((len(prompts), config.top_k, seed))
        completions = [" greedy" if config.top_k == 1 else f" s{seed + j}" for j in range(len(prompts))]
        ones = torch.ones(len(prompts), 2, dtype=torch.long)
        return Rollout(ones, ones, ones, ones, torch.zeros(len(prompts), 2), list(prompts), completions, 0)

    def log_probs(self, prompt_ids, prompt_mask, completion_ids, completion_mask, config=SamplingConfig()):
        return torch.zeros(completion_ids.shape)


QUESTIONS = ["1 + 1 =", "2 + 2 =", "3 + 3 ="]


def _scripted_judge(n_prompts: int = 3) -> AnswerJudge:
    """With seed 0, sample r of prompt i is " s{r * 3 + i}". Correct: prompt 0 in samples 0 and 1 (c = 2 of 4) and
    greedily, prompt 1 never (c = 0), prompt 2 in all four samples (c = 4) but not greedily."""
    ids = {0: [0, 1], 1: [], 2: [0, 1, 2, 3]}
    correct = {(QUESTIONS[i], f" s{r * n_prompts + i}") for i, rs in ids.items() for r in rs}
    return AnswerJudge(correct | {(QUESTIONS[0], " greedy")})


def test_accuracy_and_pass_at_k_equal_hand_computation() -> None:
    sampler = ScriptedSampler()
    rep = evaluate_policy(sampler, QUESTIONS, seed=0, gold_fn=_scripted_judge(), batch_size=2,
                          samples_per_prompt=4, pass_k=(1, 2, 4))
    assert rep.gold == pytest.approx(2 / 3), "gold scores sample 0: prompts 0 and 2 right"
    assert rep.accuracy_greedy == pytest.approx(1 / 3)
    assert rep.accuracy_sampled == pytest.approx((2 + 0 + 4) / 12)
    pass_2 = 1 - math.comb(2, 2) / math.comb(4, 2)  # prompt 0: 2 right of 4
    assert rep.pass_at_k == pytest.approx({1: 0.5, 2: (pass_2 + 0 + 1) / 3, 4: (1 + 0 + 1) / 3})
    assert rep.pass_at_k[1] == pytest.approx(rep.accuracy_sampled), "pass@1 is the sampled accuracy"
    # sample 0 is drawn once (it is gold's); 3 more draws and one greedy pass, two batches each; no seed reused
    sampled = [(b, s) for b, k, s in sampler.calls if k != 1]
    assert len(sampler.calls) == 2 * (1 + 3 + 1) and sampled == [(2, 0), (1, 2), (2, 3), (1, 5), (2, 6), (1, 8), (2, 9), (1, 11)]
    row = rep.as_dict()
    assert [k for k in row if k.startswith(("accuracy", "pass@"))] == ["accuracy_greedy", "accuracy_sampled", "pass@1",
                                                                       "pass@2", "pass@4"]


def test_a_task_without_verifiable_answers_gets_no_accuracy_and_no_extra_samples() -> None:
    old_keys = ["gold", "rm_score", "kl", "win_rate", "perplexity", "mean_tokens"]  # the row before accuracy existed
    judge = _scripted_judge()
    plain = lambda prompts, completions: judge(prompts, completions)  # noqa: E731 - the same scores, no declaration
    for gold_fn in (plain, None):
        sampler = ScriptedSampler()
        rep = evaluate_policy(sampler, QUESTIONS, seed=0, gold_fn=gold_fn, batch_size=2, samples_per_prompt=4)
        assert rep.accuracy_greedy is None and rep.accuracy_sampled is None and rep.pass_at_k is None
        assert list(rep.as_dict()) == old_keys
        assert len(sampler.calls) == 2, "one completion per prompt, as before"


def test_verifiable_summary_shows_accuracy_columns_and_other_tasks_keep_their_table() -> None:
    from llm_gym.app.summary import format_summary

    plain = evaluate_policy(ScriptedSampler(), QUESTIONS, gold_fn=lambda p, c: np.zeros(len(c)), batch_size=2)
    verified = evaluate_policy(ScriptedSampler(), QUESTIONS, seed=0, gold_fn=_scripted_judge(), batch_size=2,
                               samples_per_prompt=4, pass_k=(4, 1))

    def table(report: PolicyReport) -> list[str]:
        rows = {"sft": {"stage": "sft", "wall_seconds": 1.0, **report.as_dict()}}
        return format_summary({"name": "t", "seed": 0, "rows": rows}).splitlines()

    head = table(plain)[1].split()
    assert head == ["stage", "gold", "wall", "s"], "a gold judge that does not verify answers: the old columns"
    lines = table(verified)
    assert lines[1].split() == ["stage", "gold", "acc", "greedy", "acc", "sampled", "pass@1", "pass@4", "wall", "s"]
    assert lines[3].split() == ["sft", "+0.667", "33.3%", "50.0%", "50.0%", "66.7%", "1"]
    assert "pass@k: chance that one of k sampled answers is correct" in " ".join(lines)


def test_accuracy_on_a_real_policy_and_best_of_n(policy: Policy) -> None:
    """Greedy is top_k=1 with the rest of the sampling kept; the n samples are the seeds evaluation documents."""
    sampling = SamplingConfig(max_new_tokens=6)
    greedy = policy.sample(PROMPTS, dataclasses.replace(sampling, top_k=1), seed=0).completions
    draws = [policy.sample(PROMPTS, sampling, seed=3 + r * len(PROMPTS)).completions for r in range(3)]
    # "correct": the greedy answer on prompts 0 and 1, the first two draws' answers on prompt 2
    judge = AnswerJudge({(PROMPTS[0], greedy[0]), (PROMPTS[1], greedy[1]), (PROMPTS[2], draws[0][2]),
                         (PROMPTS[2], draws[1][2])})
    rep = evaluate_policy(policy, PROMPTS, sampling=sampling, seed=3, gold_fn=judge, samples_per_prompt=3, pass_k=(1, 3))
    correct = np.array([[judge([p], [d[i]])[0] for d in draws] for i, p in enumerate(PROMPTS)])
    assert rep.accuracy_greedy == pytest.approx(judge(PROMPTS, greedy).mean())
    assert rep.accuracy_sampled == pytest.approx(correct.mean())
    assert rep.pass_at_k[3] == pytest.approx(correct.any(axis=1).mean())
    assert rep.gold == pytest.approx(correct[:, 0].mean())
    # best-of-1 is the policy, figure for figure; best-of-4's greedy candidates are all the base's greedy answer
    bon = BestOfN(policy, length_scorer, BestOfNConfig(n=1), rng=np.random.default_rng(0))
    assert evaluate_policy(bon, PROMPTS, sampling=sampling, seed=3, gold_fn=judge, samples_per_prompt=3,
                           pass_k=(1, 3)) == rep
    bon4 = BestOfN(policy, length_scorer, BestOfNConfig(n=4), rng=np.random.default_rng(0))
    rep4 = evaluate_policy(bon4, PROMPTS, sampling=sampling, seed=3, gold_fn=judge, samples_per_prompt=2, pass_k=(2,))
    assert rep4.accuracy_greedy == rep.accuracy_greedy and set(rep4.pass_at_k) == {2}


def test_partial_credit_counts_as_wrong() -> None:
    """A verifying judge may give partial credit (some reasoning-gym datasets do): only the full score 1.0 is correct."""
    class Partial(AnswerJudge):
        def __call__(self, prompts, completions):
            return np.where(super().__call__(prompts, completions) > 0, 1.0, 0.5)

    rep = evaluate_policy(ScriptedSampler(), QUESTIONS, seed=0, gold_fn=Partial(_scripted_judge().correct), batch_size=2,
                          samples_per_prompt=4, pass_k=(1, 4))
    assert rep.gold == pytest.approx((1 + 0.5 + 1) / 3), "gold is the mean score, partial credit included"
    assert rep.accuracy_sampled == pytest.approx(0.5) and rep.pass_at_k == pytest.approx({1: 0.5, 4: 2 / 3})


def test_accuracy_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"pass_k: every k must be an int in \[1, samples_per_prompt=4\], got 8"):
        evaluate_policy(ScriptedSampler(), QUESTIONS, gold_fn=_scripted_judge(), samples_per_prompt=4, pass_k=(1, 8))
    with pytest.raises(ValueError, match="samples_per_prompt must be a positive int"):
        evaluate_policy(ScriptedSampler(), QUESTIONS, gold_fn=_scripted_judge(), samples_per_prompt=0, pass_k=(1,))


def test_evaluation_config_refuses_k_above_the_samples() -> None:
    from llm_gym.app.config import EvaluationSpec

    assert EvaluationSpec().pass_k == (1, 4, 8) and EvaluationSpec().samples_per_prompt == 8
    with pytest.raises(ValueError, match=r"pass_k has k = 8 > samples_per_prompt = 4.*samples_per_prompt = 8 or drop 8"):
        EvaluationSpec(samples_per_prompt=4)
    for bad, match in (({"samples_per_prompt": 0}, "positive int"), ({"pass_k": ()}, "non-empty"),
                       ({"pass_k": (0,)}, "positive ints"), ({"pass_k": (1, 1)}, "twice")):
        with pytest.raises(ValueError, match=match):
            EvaluationSpec(**bad)
    assert EvaluationSpec(samples_per_prompt=16, pass_k=(1, 16)).pass_k == (1, 16)


def test_the_pipeline_reports_accuracy_only_for_a_judge_that_verifies_answers(tmp_path, model_cache, tiny_model,
                                                                              monkeypatch) -> None:
    """Through `llm-gym run`'s pipeline: a verifying gold judge adds accuracy and pass@k to summary.json and the table;
    the built-in judge's rows, table and evaluation fingerprint are as before (the new settings do not rerun it)."""
    from doubles import tiny_experiment_dict
    from llm_gym.app.config import ExperimentConfig
    from llm_gym.app.pipeline import Pipeline
    from llm_gym.app.summary import format_summary
    from llm_gym.infra.configio import apply_overrides, from_dict

    (tmp_path / "pipeline_answer_judges.py").write_text(
        "class ThreeWords:\n    verifies_answers = True\n    def __call__(self, prompts, completions):\n"
        "        return [float(len(c.split()) >= 3) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {**tiny_experiment_dict(model_cache), "stages": ["pretrain", "sft", "evaluation"]}
    events: list[str] = []
    plain = Pipeline(from_dict(ExperimentConfig, data), tmp_path / "plain", on_event=events.append).run()
    old_keys = {"stage", "wall_seconds", "peak_rss_mb", "gold", "rm_score", "kl", "win_rate", "perplexity", "mean_tokens",
                "eval_seconds", "eval_peak_rss_mb", "eval_cuda_peak_mb", "labels"}
    assert set(plain["rows"]["sft"]) <= old_keys, "no accuracy keys on a task whose judge does not verify answers"
    assert "acc" not in format_summary(plain) and "pass@" not in format_summary(plain)
    events.clear()
    Pipeline(from_dict(ExperimentConfig, apply_overrides(data, ["evaluation.samples_per_prompt=2", "evaluation.pass_k=[1]"])),
             tmp_path / "plain", on_event=events.append).run()
    assert "[evaluation] done earlier (same inputs): reusing it" in events

    verified = apply_overrides(data, ['task.gold="pipeline_answer_judges:ThreeWords"', "evaluation.samples_per_prompt=3",
                                      "evaluation.pass_k=[1, 3]"])
    summary = Pipeline(from_dict(ExperimentConfig, verified), tmp_path / "verified").run()
    for name in ("pretrained", "sft"):
        row = summary["rows"][name]
        assert 0 <= row["accuracy_greedy"] <= 1 and row["pass@1"] == pytest.approx(row["accuracy_sampled"])
        assert row["accuracy_sampled"] <= row["pass@3"] <= 1
    head = format_summary(summary).splitlines()[1].split()
    assert head[:9] == ["stage", "gold", "acc", "greedy", "acc", "sampled", "pass@1", "pass@3", "KL"]
    saved = json.loads((tmp_path / "verified" / "summary.json").read_text())
    assert saved["rows"]["sft"]["pass@3"] == summary["rows"]["sft"]["pass@3"]


def test_summary_explains_the_gold_scale_the_two_rm_accuracies_and_warns_on_a_weak_rm() -> None:
    from llm_gym.app.summary import LOW_RM_AGREEMENT, format_summary

    def summary(gold_agreement: float, **extra: float) -> dict:
        rows = {"pretrained": {"gold": 0.0}, "sft": {"gold": 0.669},
                "reward_model": {"labels": 700, "gold_agreement": gold_agreement, "heldout_accuracy": 0.612,
                                 "label_agreement": 0.731}}
        return {"name": "t", "seed": 0, "rows": rows, **extra}

    lines = format_summary(summary(0.70, demonstrations_gold=0.838)).splitlines()
    text = " ".join(lines)
    assert "gold scale: pretrained +0.000, sft +0.669, the task's demonstrations +0.838" in text
    assert "RM~gold 70.0% is the reward model against the noiseless gold order" in text
    assert "reward_model/heldout_accuracy (61.2%)" in text and "agree with the gold order on 73.1% of pairs" in text
    assert "warning" not in text, "an RM at InstructGPT's agreement gets no warning"
    weak = " ".join(format_summary(summary(LOW_RM_AGREEMENT - 0.02)).splitlines())
    assert "warning: the reward model orders only 63.0% of held-out pairs as the gold judge does" in weak
    assert "oracle.agreement = 0.73" not in weak, "the labels already agree as people do: no advice to calibrate"
    raw = " ".join(format_summary(summary(LOW_RM_AGREEMENT - 0.02) | {"rows": {
        "reward_model": {"labels": 700, "gold_agreement": 0.63, "heldout_accuracy": 0.6, "label_agreement": 0.63}}}).splitlines())
    assert "oracle.agreement = 0.73" in raw, "noisier labels than people's: the calibrated labeller is suggested"
    assert "the task's demonstrations" not in weak, "no demonstrations scored: the scale shows what it has"
    plain = format_summary({"name": "t", "seed": 0, "rows": {"sft": {"gold": 0.5}}})
    assert "gold scale" not in plain and "RM~gold" not in plain, "one row: nothing to explain"


def test_demonstrations_gold_scores_text_demonstrations_only() -> None:
    from llm_gym.app.summary import demonstrations_gold
    from llm_gym.core.task import Demonstration

    judge = lambda prompts, completions: np.array([float(len(c)) for c in completions])  # noqa: E731
    demos = [Demonstration("p", "ab"), Demonstration("q", "abcd")]
    assert demonstrations_gold(judge, demos) == pytest.approx(3.0)
    assert demonstrations_gold(None, demos) is None and demonstrations_gold(judge, []) is None
    chat = [Demonstration([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}])]
    assert demonstrations_gold(judge, chat) is None
