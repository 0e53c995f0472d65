"""Data parallelism: 2 CPU processes (gloo) under torchrun against one process over the same global batches.

One launch runs SFT, reward-model training and two PPO iterations (tests/distributed_worker.py,
gradient accumulation 2 in every stage); the single-process reference runs in this process
without accumulation. PPO's reference samples the global batch in the two halves the two
ranks sampled, with the seeds they used (rank 0 uses the single-process seed).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm_gym import Policy, Rollout
from llm_gym.agents.ppo import PPO, PPOConfig
from llm_gym.agents.rollout import rank_seed as _rank_seed
from llm_gym.infra.distributed import Distributed, micro_batches, resolve_mixed_precision
from llm_gym.envs import PromptBanditVecEnv

import distributed_worker as worker  # tests/ is on sys.path (pyproject: pythonpath)

WORKER = Path(worker.__file__)


@pytest.fixture(scope="module")
def launched(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data_parallel")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tiny_model.path), str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    print(f"2-process launch took {time.perf_counter() - t:.1f}s")
    return out


def _pad_cat(parts: list[torch.Tensor], pad: float, left: bool) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        fill = torch.full((p.shape[0], width - p.shape[1]), pad, dtype=p.dtype, device=p.device)
        padded.append(torch.cat([fill, p] if left else [p, fill], dim=1))
    return torch.cat(padded)


def _two_rank_sample(original):
    """`Policy.sample` as the two ranks run it: each half of the prompts with that rank's seed, concatenated."""

    def sample(self: Policy, prompts, config, seed=None) -> Rollout:
        halves = [original(self, list(p), config, seed=_rank_seed(seed, r)) for r, p in enumerate(micro_batches(prompts, 2))]
        pad = self.tokenizer.pad_token_id
        return Rollout(
            prompt_ids=_pad_cat([h.prompt_ids for h in halves], pad, left=True),
            prompt_mask=_pad_cat([h.prompt_mask for h in halves], 0, left=True),
            completion_ids=_pad_cat([h.completion_ids for h in halves], pad, left=False),
            completion_mask=_pad_cat([h.completion_mask for h in halves], 0, left=False),
            logprobs=_pad_cat([h.logprobs for h in halves], 0.0, left=False),
            prompts=[p for h in halves for p in h.prompts],
            completions=[c for h in halves for c in h.completions],
            num_truncated_prompts=sum(h.num_truncated_prompts for h in halves),
        )

    return sample


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("single_process")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Policy, "sample", _two_rank_sample(Policy.sample))
        torch.manual_seed(0)
        return worker.run(str(tiny_model.path), out, Distributed(), accumulation=1)


def test_ranks_hold_identical_parameters(launched: Path) -> None:
    r0, r1 = (load_file(str(launched / f"params_rank{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys()
    different = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not different, f"ranks disagree on {different[:5]}"


def test_matches_a_single_process_run_over_the_same_global_batch(launched: Path, reference, tiny_model) -> None:
    dp = load_file(str(launched / "params_rank0.safetensors"))
    assert dp.keys() == reference.keys()
    bad = []
    for key, value in dp.items():
        ref = reference[key].to(value.dtype)
        if key.endswith("attn.c_attn.bias"):
            # the key bias has an analytically zero gradient (softmax ignores a shift shared by all keys);
            # Adam divides its float noise by its own size and steps it by about +-lr, so it is left out
            d = value.shape[0] // 3
            value, ref = torch.cat([value[:d], value[2 * d :]]), torch.cat([ref[:d], ref[2 * d :]])
        if key in ("rm.backbone.ln_f.bias", "rm.head.bias"):
            continue  # likewise: each shifts every reward alike, and the ranking loss sees only differences
        if not torch.allclose(value, ref, atol=1e-5, rtol=1e-4):
            bad.append(f"{key}: max |diff| {float((value - ref).abs().max()):.2e}")
    assert not bad, "data-parallel and single-process runs differ:\n" + "\n".join(bad)
    assert float(dp["ppo.scored"]) == 8.0, "each process scored its half of the 2 x 4 completions (Distributed.sharded)"
    # the updates did something: SFT and PPO moved the weights away from the pretrained ones
    start = Policy.from_pretrained(tiny_model.path, device="cpu").model.state_dict()
    for stage in ("sft.", "ppo.policy."):
        moved = max(float((dp[stage + k] - v).abs().max()) for k, v in start.items())
        assert moved > 1e-4, f"{stage} did not change the parameters"


def test_only_the_main_process_writes_logs_and_checkpoints(launched: Path, tiny_model) -> None:
    assert not (launched / "logs_rank1").exists() and not (launched / "ckpt_rank1").exists(), "rank 1 wrote files"
    for stage in ("sft", "rm", "ppo"):
        events = list((launched / "logs_rank0" / stage).glob("events.out.tfevents.*"))
        assert len(events) == 1, f"{stage}: expected one event file from rank 0, found {events}"
    # the data-parallel checkpoint loads in a single process, with the trained weights
    agent = PPO.load(launched / "ckpt_rank0" / "ppo", env=PromptBanditVecEnv(worker.PROMPTS, worker.count_e, num_envs=4),
                     ptx_texts=worker.PTX_TEXTS, device="cpu")
    trained = load_file(str(launched / "params_rank0.safetensors"))
    for k, v in agent.policy.model.state_dict().items():
        assert torch.equal(v, trained["ppo.policy." + k])
    assert agent.kl_ctl.value == float(trained["ppo.kl_coef"])


def test_single_process_stand_in_and_options() -> None:
    dist = Distributed()
    assert (dist.rank, dist.world_size, dist.is_main, dist.device) == (0, 1, True, None)
    assert dist.shard([1, 2, 3]) == [1, 2, 3]
    assert dist.reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert dist.broadcast_object({"x": 1}) == {"x": 1} and dist.gather_object(3) == [3]
    assert dist.main_process_only(lambda: 7)() == 7
    assert dist.sharded(worker.count_e) is worker.count_e, "one process scores the whole batch itself"
    model = torch.nn.Linear(2, 1)
    assert dist.prepare(model) == (model, None) and dist.unwrap(model) is model
    assert micro_batches(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert dist.sum_floats(1, 2.5) == (1.0, 2.5) and dist.sum_float(3) == 3.0
    assert dist.micro_shards([1, 2, 3], 2) == [([1], 1.0), ([2, 3], 1.0)]
    # more micro-steps than items: the empty pieces run the batch's first item at weight 0
    assert dist.micro_shards([7], 3) == [([7], 0.0), ([7], 0.0), ([7], 1.0)]
    assert resolve_mixed_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        PPOConfig(mixed_precision="fp16")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        PPOConfig(gradient_accumulation_steps=0)


def test_bf16_sft_step_runs_on_cpu(policy: Policy) -> None:
    from llm_gym.agents.sft import SFTConfig, SFTTrainer

    metrics = SFTTrainer(SFTConfig(epochs=1, batch_size=4, heldout_fraction=0.0, mixed_precision="bf16"),
                         rng=np.random.default_rng(0)).fit(policy, worker.DEMOS[:4])
    assert np.isfinite(metrics["sft_loss"])


def _graph_ops(t: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind `t`."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            todo.extend(n for n, _ in node.next_functions)
    return seen


def test_cpu_bf16_autocast_runs_attention_on_the_math_kernel() -> None:
    q = torch.randn(2, 2, 8, 16, requires_grad=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.autocast("cpu", dtype=torch.bfloat16):  # plain autocast: the flash kernel, whose bf16 backward is slow
        assert any("Flash" in n for n in _graph_ops(sdpa(q, q, q, is_causal=True)))
    amp = Distributed.autocast("bf16", torch.device("cpu"))
    for _ in range(2):  # reusable, like torch.autocast
        with amp:
            out = sdpa(q, q, q, is_causal=True)
            assert not torch.backends.cuda.flash_sdp_enabled()
        assert out.dtype == torch.bfloat16 and not any("Flash" in n for n in _graph_ops(out))
        out.float().sum().backward()
        assert torch.isfinite(q.grad).all()
        with torch.no_grad(), amp:  # passes without gradients too: old log-probs agree with the training pass
            assert torch.is_autocast_enabled("cpu") and not torch.backends.cuda.flash_sdp_enabled()
    assert not torch.is_autocast_enabled("cpu") and torch.backends.cuda.flash_sdp_enabled()
    assert isinstance(Distributed.autocast("no", torch.device("cpu")), type(contextlib.nullcontext()))


def test_llm_gym_run_under_torchrun(tiny_model, model_cache, tmp_path) -> None:
    """`torchrun -m llm_gym run CONFIG`: the same experiment file, data-parallel, written once; a rerun resumes."""
    import json

    from doubles import tiny_experiment_dict

    config = tiny_experiment_dict(model_cache)
    config["preference_loop"] = {"online": {
        "iterations": 2, "num_envs": 8, "trainer": {"epochs": 1},
        "schedule": {"total_labels": 12, "initial_labels": 8, "labels_per_round": 4, "steps_per_round": 8, "oversample": 1},
        "config": {"minibatch_size": 4, "sampling": {"max_new_tokens": 8}}}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llm_gym", "run", str(path), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert "on 2 processes" in proc.stdout and proc.stdout.count("== tiny (seed 0) ==") == 1, "only rank 0 prints"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"].keys() == {"pretrained", "sft", "reward_model", "ppo", "ppo_ptx", "online"}
    assert all(np.isfinite(summary["rows"][n]["gold"]) for n in ("sft", "ppo", "ppo_ptx", "online"))
    for stage in ("sft", "reward_model", "ppo_ppo", "ppo_ppo_ptx", "loop_online"):
        assert len(list((out / "tb" / stage).glob("events.out.tfevents*"))) == 1, f"{stage}: one writer (rank 0)"
    from llm_gym import PreferenceStore

    with PreferenceStore(out / "preference_loop" / "online" / "labels.sqlite") as store:
        assert store.counts()["queries"] == 12, "one labeller spends the loop's budget once"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "[ppo.ppo] done earlier" in again.stdout and "running" not in again.stdout


def test_closing_the_stand_in_is_a_no_op() -> None:
    with Distributed() as dist:
        assert dist.world_size == 1
    dist.close()  # idempotent


FAILING_RANK = '''
import sys, time
from llm_gym.infra.distributed import Distributed

with Distributed.from_environment() as dist:
    assert dist.world_size == 2
    if dist.is_main:
        raise RuntimeError("rank 0 failed on purpose")
    dist.broadcast_object("rank 1 waits here for a broadcast rank 0 never sends")
'''


def test_a_failing_process_ends_the_launch_instead_of_hanging_it(tmp_path) -> None:
    """Regression: leaving the `with Distributed` block on an error used to wait at a barrier for
    processes that were inside some other collective, so one rank's error hung the whole launch."""
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "rank 0 failed on purpose" in proc.stdout + proc.stderr
    assert time.perf_counter() - t < 120, "the launch ended by the launcher, not by a collective's 30-minute timeout"


SHARDED_REWARD = '''
import os
from llm_gym.infra.distributed import Distributed

def length(prompts, completions):
    return [float("nan") if c == "bad" else float(len(c)) for c in completions]

def say(text):  # one write per line: the two processes share the launcher's stdout
    os.write(1, (text + chr(10)).encode())

with Distributed.from_environment() as dist:
    scored = dist.sharded(length)
    say(f"rank {dist.rank} scores {scored(['p'] * 5, ['a', 'bb', 'ccc', 'dddd', 'eeeee']).tolist()}")
    say(f"rank {dist.rank} small {scored(['p'], ['xyz']).tolist()}")
    try:
        scored(["p"] * 4, ["a", "bb", "bad", "dddd"])  # only rank 1's shard holds the bad reward
    except ValueError as exc:
        say(f"rank {dist.rank} caught: {exc}")
    try:
        scored(["a"], ["xy", "xyz"])
    except ValueError as exc:
        say(f"rank {dist.rank} refused: {exc}")
'''


def test_sharded_reward_scores_in_order_and_fails_on_every_process(tmp_path) -> None:
    """`Distributed.sharded`: each process scores its shard and every process gets the whole batch in
    order; a bad reward on one shard raises on every process (none is left waiting in the gather)."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_REWARD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} scores [1.0, 2.0, 3.0, 4.0, 5.0]" in proc.stdout
        assert f"rank {rank} small [3.0]" in proc.stdout  # a batch smaller than the process count
        caught = [line for line in proc.stdout.splitlines() if line.startswith(f"rank {rank} caught: ")]
        assert len(caught) == 1 and "process 1, whose shard starts at batch item 2" in caught[0] and "NaN" in caught[0], caught
        assert f"rank {rank} refused: got 1 prompts but 2 completions" in proc.stdout
