"""`llm_gym/ReasoningGym-v0`: reasoning-gym problems as a prompt bandit paid reasoning-gym's own score."""

from __future__ import annotations

import builtins
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym.core.task import Task

pytest.importorskip("reasoning_gym")

from llm_gym.envs.reasoning_gym import (ReasoningGymEnv, ReasoningGymScorer, ReasoningGymVecEnv,  # noqa: E402
                                        build_reasoning_task)

ENV = "llm_gym/ReasoningGym-v0"


def _answer(prompt: str, env) -> str:
    source, entry = env.unwrapped.scorer.entries[prompt]
    return entry["answer"]


@pytest.mark.parametrize(("dataset", "config"), [
    ("chain_sum", {"max_terms": 3}),
    ("basic_arithmetic", {"max_terms": 2, "max_digits": 2}),
    ("letter_counting", {}),
    ("word_sorting", {"max_words": 4}),
])
def test_check_env_and_right_answers_score_one(dataset: str, config: dict) -> None:
    env = gymnasium.make(ENV, dataset=dataset, size=12, seed=0, **config)
    assert isinstance(env.unwrapped, ReasoningGymEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=False)
    prompt, _ = env.reset(seed=1)
    assert prompt.endswith("Give your final answer on the last line, after 'Answer:'.")
    reference = _answer(prompt, env)
    _, reward, terminated, truncated, info = env.step(f"Let me work it out.\nAnswer: {reference}")
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["answer"] == reference and info["extracted"] == reference.strip()
    assert info["dataset"] == dataset and info["unextractable"] is False and info["gold"] == 1.0
    env.reset(seed=2)
    _, reward, _, _, info = env.step("I have no idea")
    assert reward == 0.0 and info["unextractable"] is True and info["extracted"] is None


def test_task_has_held_out_prompts_from_another_seed_and_a_verifying_gold() -> None:
    env = gymnasium.make(ENV, dataset="chain_sum", size=30, eval_size=10, seed=0).unwrapped
    task = env.task
    assert isinstance(task, Task) and len(task.prompts) == 30
    assert 0 < len(task.eval_prompts) <= 10 and len(task.eval_prompts) + env.eval_overlap == 10
    assert not set(task.eval_prompts) & set(task.prompts)
    assert isinstance(task.gold, ReasoningGymScorer) and task.gold.verifies_answers
    assert env.reward_fn is task.gold
    # the gold scores held-out prompts too (the evaluation asks it about them)
    p = task.eval_prompts[0]
    assert task.gold([p], [f"Answer: {env.scorer.entries[p][1]['answer']}"]).tolist() == [1.0]
    # the same seed makes the same prompts; another seed others
    again = gymnasium.make(ENV, dataset="chain_sum", size=30, eval_size=10, seed=0).unwrapped.task
    other = gymnasium.make(ENV, dataset="chain_sum", size=30, eval_size=10, seed=1).unwrapped.task
    assert again.prompts == task.prompts and again.eval_prompts == task.eval_prompts
    assert other.prompts != task.prompts


def test_extraction_rules_and_instruction_are_configurable() -> None:
    env = gymnasium.make(ENV, dataset="chain_sum", size=5, rule="tag").unwrapped
    prompt, _ = env.reset(seed=0)
    assert prompt.endswith("Give your final answer between <answer> and </answer>.")
    ref = _answer(prompt, env)
    assert env.step(f"<answer>{ref}</answer>")[1] == 1.0
    env = gymnasium.make(ENV, dataset="chain_sum", size=5, rule="whole", instruction="").unwrapped
    prompt, _ = env.reset(seed=0)
    assert prompt.endswith("=")  # the bare question
    assert env.step(f" {_answer(prompt, env)} ")[1] == 1.0
    with pytest.raises(ValueError, match="rule must be one of"):
        gymnasium.make(ENV, dataset="chain_sum", size=5, rule="first")


def test_vector_env_reports_answers_per_completion_in_groups() -> None:
    vec = gymnasium.make_vec(ENV, num_envs=6, group_size=3, dataset="chain_sum", size=20, max_terms=3)
    assert isinstance(vec, ReasoningGymVecEnv)
    prompts, info = vec.reset(seed=0)
    assert info["group"].tolist() == [0, 0, 0, 1, 1, 1]
    refs = [vec.scorer.entries[p][1]["answer"] for p in prompts]
    actions = [f"Answer: {refs[0]}", "Answer: banana", "nothing", f"Answer: {refs[3]}", "Answer: -0", "<answer>"]
    _, rewards, terminated, truncated, info = vec.step(actions)
    assert rewards[0] == 1.0 and rewards[3] == 1.0 and rewards[1] == rewards[2] == rewards[5] == 0.0
    assert terminated.all() and not truncated.any()
    assert info["answer"].tolist() == refs
    assert info["extracted"].tolist()[:3] == [refs[0], "banana", None]
    assert info["unextractable"].tolist() == [False, False, True, False, False, True]
    assert int(info["unextractable"].sum()) == vec.scorer.last_stats.unextractable == 2
    assert set(info["dataset"]) == {"chain_sum"}
    vec.close()


def test_weighted_mixture_of_datasets() -> None:
    env = gymnasium.make(ENV, dataset={"chain_sum": {"weight": 3, "max_terms": 2}, "letter_counting": {"weight": 1}},
                         size=40, seed=0).unwrapped
    names = [env.scorer.entries[p][1]["metadata"]["source_dataset"] for p in env.task.prompts]
    assert set(names) == {"chain_sum", "letter_counting"} and names.count("chain_sum") > names.count("letter_counting")
    for p in env.task.prompts[:6]:  # the composite forwards each item to its own dataset's score_answer
        assert env.scorer([p], [f"Answer: {env.scorer.entries[p][1]['answer']}"]).tolist() == [1.0]
    listed = gymnasium.make(ENV, dataset=["chain_sum", "word_sorting"], weights=[1, 1], size=10).unwrapped
    assert {listed.scorer.entries[p][1]["metadata"]["source_dataset"] for p in listed.task.prompts} <= \
        {"chain_sum", "word_sorting"}


def test_a_learned_reward_can_be_paid_while_the_score_stays_gold() -> None:
    env = gymnasium.make(ENV, dataset="chain_sum", size=5, reward_fn=lambda p, c: [float(len(x)) for x in c])
    prompt, _ = env.reset(seed=0)
    ref = _answer(prompt, env)
    _, reward, _, _, info = env.step(f"Answer: {ref}")
    assert reward == len(f"Answer: {ref}") and info["gold"] == 1.0 and info["answer"] == ref


def test_score_answer_that_raises_costs_the_answer_not_the_batch() -> None:
    class Broken:
        def score_answer(self, answer, entry):
            raise RuntimeError("boom")

    scorer = ReasoningGymScorer({"q": (Broken(), {"answer": "1", "metadata": {"source_dataset": "x"}})}, rule="whole")
    assert scorer(["q", "q"], ["1", " "]).tolist() == [0.0, 0.0]
    assert scorer.last_stats.errors == 1 and scorer.last_stats.unextractable == 1
    assert scorer.last_checks[0].error == "RuntimeError: boom"
    with pytest.raises(KeyError, match="no reasoning-gym item for prompt 'other'"):
        scorer(["other"], ["1"])


def test_unknown_dataset_lists_close_names() -> None:
    with pytest.raises(ValueError, match="no dataset 'chain_summ'; did you mean 'chain_sum'"):
        gymnasium.make(ENV, dataset="chain_summ")
    with pytest.raises(ValueError, match="no dataset 'zzzz'; the .* datasets are .*'word_sorting'"):
        build_reasoning_task("zzzz")
    with pytest.raises(ValueError, match="no dataset 'letter_countin'; did you mean 'letter_counting'"):
        build_reasoning_task({"chain_sum": {}, "letter_countin": {}})


def test_refused_configs_pass_the_message_on_with_the_field() -> None:
    with pytest.raises(ValueError, match="'chain_sum' refused its field 'min_terms': min_terms must be positive"):
        gymnasium.make(ENV, dataset="chain_sum", min_terms=0)
    with pytest.raises(ValueError, match="refused its field 'max_terms': max_terms must be >= min_terms"):
        build_reasoning_task("chain_sum", min_terms=5, max_terms=2)
    with pytest.raises(ValueError, match="no config field 'max_term'; did you mean 'max_terms'.*its fields are"):
        build_reasoning_task("chain_sum", max_term=3)
    with pytest.raises(ValueError, match="'chain_sum' refused its field 'min_terms'"):
        build_reasoning_task({"chain_sum": {"min_terms": 0}, "letter_counting": {}})
    with pytest.raises(ValueError, match="give each one's config in its entry"):
        build_reasoning_task(["chain_sum", "letter_counting"], max_terms=3)
    with pytest.raises(ValueError, match="size must be a positive int"):
        build_reasoning_task("chain_sum", size=0)
    with pytest.raises(ValueError, match="weight of dataset 'chain_sum' must be a positive number"):
        build_reasoning_task({"chain_sum": {"weight": 0}, "letter_counting": {}})


def test_missing_reasoning_gym_says_how_to_install(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_reasoning_gym(name, *args, **kwargs):
        if name == "reasoning_gym" or name.startswith("reasoning_gym."):
            raise ImportError("No module named 'reasoning_gym'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_reasoning_gym)
    for name in [m for m in sys.modules if m == "reasoning_gym" or m.startswith("reasoning_gym.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install reasoning-gym \(or pip install llm-gym\[reasoning\]\)"):
        gymnasium.make(ENV, dataset="chain_sum", size=5)


def test_importing_llm_gym_imports_neither_reasoning_gym_nor_torch() -> None:
    code = ("import sys, gymnasium, llm_gym, llm_gym.envs\n"
            "gymnasium.spec('llm_gym/ReasoningGym-v0')\n"
            "print(sorted(m for m in ('reasoning_gym', 'torch', 'llm_gym.envs.reasoning_gym') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scores_are_reasoning_gyms_own() -> None:
    """letter_counting's score_answer is reasoning-gym's: the env adds nothing to it but the extraction."""
    import reasoning_gym

    env = gymnasium.make(ENV, dataset="letter_counting", size=5, seed=3).unwrapped
    ds = reasoning_gym.create_dataset("letter_counting", size=5, seed=3)
    for i, p in enumerate(env.task.prompts):
        for guess in ("0", "1", "2", "x"):
            assert env.scorer([p], [f"Answer: {guess}"])[0] == ds.score_answer(guess, ds[i])
    assert isinstance(env.scorer([p], ["Answer: 1"]), np.ndarray)


def test_the_module_example_runs() -> None:
    import doctest

    from llm_gym.envs import reasoning_gym as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_the_scorer_fingerprint_is_the_same_for_the_same_items_in_any_process() -> None:
    """A run's fingerprint holds the scorer's: it must not depend on where the datasets sit in memory (it did: every
    rerun of a reasoning-gym experiment reran its RL runs), and must change with the items."""
    from llm_gym.envs.reasoning_gym import build_reasoning_task

    one = build_reasoning_task("chain_sum", 6, 0, min_terms=2, max_terms=2)
    two = build_reasoning_task("chain_sum", 6, 0, min_terms=2, max_terms=2)
    assert one.scorer is not two.scorer and one.scorer.fingerprint() == two.scorer.fingerprint()
    assert build_reasoning_task("chain_sum", 6, 1, min_terms=2, max_terms=2).scorer.fingerprint() != one.scorer.fingerprint()
    assert build_reasoning_task("chain_sum", 6, 0, min_terms=2, max_terms=2,
                                rule="tag").scorer.fingerprint() != one.scorer.fingerprint()
