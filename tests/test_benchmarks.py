"""The benchmark scripts under experiments/ run their main path at the smoke size and print whole tables.

No timing is asserted (speed lives in the scripts' own runs): each script runs one short iteration on the session's
smoke model, and its printed rows must be there with finite, positive figures. The scripts import each other as
siblings, as they do when run from `experiments/`.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from llm_gym import Policy, TinyLMConfig, generate_review_task
from llm_gym.models.text import encode

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def bench() -> Iterator[Callable[[str], ModuleType]]:
    """Imports a benchmark script by its module name."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.fixture()
def common(model_cache: Path, tiny_model) -> list[str]:
    """The arguments every script gets: the session's smoke model (built once) and one thread."""
    return ["--cache-dir", str(model_cache), "--threads", "1"]


def row(out: str, name: str) -> list[float]:
    """The numbers of the printed row that begins with `name` (thousands separators, % and x dropped)."""
    lines = [line for line in out.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"expected one row {name!r} in:\n{out}"
    numbers = []
    for field in lines[0][len(name):].split():
        try:
            numbers.append(float(field.replace(",", "").rstrip("%x")))
        except ValueError:
            pass
    return numbers


def assert_positive(numbers: list[float], what: str) -> None:
    assert numbers, f"{what}: no numbers"
    assert all(math.isfinite(v) and v > 0 for v in numbers), f"{what}: {numbers}"


def test_exact_length_prompts_have_n_tokens(bench, policy: Policy) -> None:
    prompts = generate_review_task(TinyLMConfig.smoke().task).prompts
    for n in (4, 16):
        built = bench("bench_ppo").exact_length_prompts(policy.tokenizer, prompts, n)
        assert len(built) >= 16
        assert all(len(ids) == n for ids in encode(policy.tokenizer, built))
        _, mask, _ = policy.encode_prompts(built, 8)  # as the PPO agent reads them: no prompt cut or padded
        assert mask.sum(-1).tolist() == [n] * len(built)
    with pytest.raises(ValueError, match="no room"):
        bench("bench_ppo").exact_length_prompts(policy.tokenizer, prompts, 1)  # the BOS alone


@pytest.mark.parametrize("options", [[], ["--mixed-precision", "bf16", "--fused-adamw", "--reward", "rm"]],
                         ids=["fp32", "bf16-fused-rm"])
def test_bench_ppo_prints_every_phase(bench, common: list[str], options: list[str], capsys) -> None:
    result = bench("bench_ppo").main(["--model", "smoke", *common, "--iterations", "1", "--prompts", "8",
                                      "--prompt-tokens", "8", "--new-tokens", "4", "--epochs", "1", *options])
    out = capsys.readouterr().out
    assert "8 prompts x (8 prompt + 4 new) tokens" in out
    for phase in ("generation", "reference", "update", "total"):
        assert_positive(row(out, phase), phase)
    assert row(out, "scoring")[0] > 0  # seconds; the gold scorer's FLOPs are not counted
    assert_positive(row(out, "tokens/s"), "tokens/s")
    assert_positive(row(out, "peak memory"), "peak memory")
    if options:
        assert "precision bf16, fused AdamW" in out
        assert_positive(row(out, "MFU"), "MFU")
    assert_positive(list(result.values()), "returned figures")


def test_bench_sampling_prints_both_sides(bench, common: list[str], capsys) -> None:
    result = bench("bench_sampling").main(["--model", "smoke", *common, "--repeats", "1", "--batch", "4",
                                           "--new-tokens", "8"])
    out = capsys.readouterr().out
    for side in ("policy.sample", "model.generate"):
        numbers = row(out, side)
        assert len(numbers) == 7  # median s, min s, 2 x tok/s, GFLOP/s, of peak, EOS sampled
        assert_positive(numbers[:6], side)
    assert_positive(row(out, "matmul peak"), "matmul peak")
    assert_positive(row(out, "peak memory"), "peak memory")
    assert_positive(list(result.values()), "returned figures")


def test_bench_reward_model_prints_scoring_and_a_step(bench, common: list[str], capsys) -> None:
    result = bench("bench_reward_model").main(["--model", "smoke", *common, "--repeats", "1", "--comparisons", "4"])
    out = capsys.readouterr().out
    assert "4 pairwise comparisons = 8 sequences" in out
    for phase in ("scoring", "training step"):
        assert_positive(row(out, phase), phase)
    assert_positive(row(out, "peak memory"), "peak memory")
    assert_positive(list(result.values()), "returned figures")


def test_bench_agents_prints_each_agent(bench, common: list[str], capsys) -> None:
    result = bench("bench_agents").main(["--smoke", *common, "--iterations", "1", "--completions", "16",
                                         "--new-tokens", "4"])
    out = capsys.readouterr().out
    for agent in ("PPO", "RLOO", "GRPO", "Dr. GRPO"):
        assert out.count(f"\n{agent} ") == 2  # both tables
    assert set(result) == {"default", "equal"}
    assert_positive([s for table in result.values() for s in table.values()], "seconds per iteration")


def test_bench_update_costs_prints_each_variant(bench, common: list[str], capsys) -> None:
    result = bench("bench_update_costs").main(["--model", "smoke", *common, "--repeats", "1", "--prompt-tokens", "4",
                                               "--new-tokens", "4"])
    out = capsys.readouterr().out
    for variant in ("loop (default on CPU)", "foreach", "fused (fused_adamw)", "entropy differentiated (old)",
                    "entropy for the logs (new)", "kept", "checkpointed", "flash kernel (plain autocast)",
                    "math kernel (mixed_precision)"):
        assert_positive(row(out, "  " + variant)[:2], variant)  # seconds and ratio (a memory rise can be 0 MB)
    assert_positive(list(result.values()), "returned ratios")


def test_bench_bf16_attention_prints_both_kernels(bench, common: list[str], capsys) -> None:
    from llm_gym.infra.distributed import Distributed

    ours = Distributed.__dict__["autocast"]
    result = bench("bench_bf16_attention").main(["--model", "smoke", *common, "--iterations", "1", "--prompts", "8",
                                                 "--prompt-tokens", "4", "--new-tokens", "4"])
    out = capsys.readouterr().out
    for variant in ("flash kernel (plain autocast)", "math kernel (mixed_precision)"):
        assert_positive(row(out, variant), variant)  # seconds by phase and the ratio
    assert_positive(list(result.values()), "seconds per iteration")
    assert Distributed.__dict__["autocast"] is ours  # the plain variant's patch is undone


def test_bench_all_prints_one_summary_table(bench, common: list[str], capsys) -> None:
    rows = bench("bench_all").main(["--smoke", *common])
    out = capsys.readouterr().out
    assert out.count("== bench_all") == 1 and "== bench_ppo" not in out  # the scripts' own reports are not shown
    assert {r[0] for r in rows} == {"sampling", "ppo", "agents", "update costs", "reward model"}
    for benchmark, figure, value, share in rows:
        assert f"{benchmark}  " in out and figure in out
        numbers = [float(v.replace(",", "").rstrip("%x")) for v in (value, share.split()[0]) if v != "-"]
        assert_positive(numbers, f"{benchmark}: {figure}")
