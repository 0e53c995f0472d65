"""DPO: the loss formulas against hand computation, training end to end, exact resume, bad input."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_gym import Comparison, Logger, Policy
from llm_gym.agents.checkpoint import CheckpointError
from llm_gym.agents.dpo import DPO, DPOConfig, dpo_loss, dpo_stats
from llm_gym.agents.reference import make_reference
from llm_gym.infra.update import TrainingDivergedError
from llm_gym.models.reward_losses import ranking_stats

BETA = 0.5
PROMPTS = [
    "the film was", "this camera is", "review of the hotel :", "the headphones", "i bought this laptop and",
    "my sister loved this novel , but the ending", "review of the blender : the motor is very", "this game is",
    "the soundtrack", "honestly , this show is", "the battery of this phone", "the ending of the book",
    "the service at this restaurant", "a friend lent me this album and", "the plot", "this blender",
    "the screen of this laptop", "the hotel staff", "the actors", "this novel is", "the pizza was", "the camera",
    "this kettle", "the chair is", "the movie",
]
GOOD, BAD = " it was great and i loved it .", " it was awful and i hated it ."


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pairs_of(prompts: list[str]) -> list[Comparison]:
    """Pairwise comparisons with GOOD preferred, shown in either order."""
    return [Comparison(p, (GOOD, BAD), (0, 1)) if i % 2 else Comparison(p, (BAD, GOOD), (1, 0))
            for i, p in enumerate(prompts)]


def sequence_logps(policy: Policy, prompt: str, completions: tuple[str, ...]) -> torch.Tensor:
    with torch.no_grad():
        return policy.log_probs(*policy.encode_pairs([prompt] * len(completions), list(completions))).sum(-1)


def hashes(folder: Path) -> dict[Path, str]:
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.rglob("*") if f.is_file()}


def params(policy: Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


# ------------------------------------------------------------------------------------- formulas by hand
# two pairwise elements, the first completion preferred in both; h = (pi_w - ref_w) - (pi_l - ref_l)
PI = [[-3.0, -4.0], [-2.0, -1.0]]
REF = [[-3.5, -3.5], [-1.5, -1.0]]
H = [(-3.0 + 3.5) - (-4.0 + 3.5), (-2.0 + 1.5) - (-1.0 + 1.0)]  # [1.0, -0.5]


def _grad(loss_type: str, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    pi = torch.tensor(PI, dtype=torch.float64, requires_grad=True)
    loss = dpo_loss(pi, torch.tensor(REF, dtype=torch.float64), torch.tensor([[0, 1], [0, 1]]), beta=BETA,
                    loss_type=loss_type, label_smoothing=label_smoothing)
    loss.backward()
    return loss.detach(), pi.grad


def test_sigmoid_loss_and_gradient_by_hand() -> None:
    loss, grad = _grad("sigmoid")
    expected = np.mean([-math.log(sig(BETA * h)) for h in H])
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    # dL/dh = -beta sigmoid(-beta h), over 2 elements; h rises with log pi(y_w) and falls with log pi(y_l)
    for b, h in enumerate(H):
        d = -BETA * sig(-BETA * h) / 2
        assert grad[b].tolist() == pytest.approx([d, -d], abs=1e-12)


def test_ipo_loss_and_gradient_by_hand() -> None:
    loss, grad = _grad("ipo")
    target = 1 / (2 * BETA)
    assert float(loss) == pytest.approx(np.mean([(h - target) ** 2 for h in H]), abs=1e-12)
    for b, h in enumerate(H):
        d = 2 * (h - target) / 2
        assert grad[b].tolist() == pytest.approx([d, -d], abs=1e-12)


def test_label_smoothing_by_hand() -> None:
    eps = 0.2
    loss, grad = _grad("sigmoid", eps)
    expected = np.mean([-(1 - eps) * math.log(sig(BETA * h)) - eps * math.log(sig(-BETA * h)) for h in H])
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    for b, h in enumerate(H):
        d = -BETA * ((1 - eps) * sig(-BETA * h) - eps * sig(BETA * h)) / 2
        assert grad[b].tolist() == pytest.approx([d, -d], abs=1e-12)
    # IPO with a soft label p = 1 - eps: the target shrinks to (1 - 2 eps) / (2 beta), plus eps (1 - eps) / beta^2
    loss, grad = _grad("ipo", eps)
    target = (1 - 2 * eps) / (2 * BETA)
    assert float(loss) == pytest.approx(np.mean([(h - target) ** 2 + eps * (1 - eps) / BETA**2 for h in H]), abs=1e-12)
    for b, h in enumerate(H):
        assert grad[b].tolist() == pytest.approx([(h - target), -(h - target)], abs=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_ties_by_hand(loss_type: str) -> None:
    # element 0 is a strict pair (h = 1), element 1 a tie (h = -0.5)
    ranks = torch.tensor([[0, 1], [0, 0]])
    ref = torch.tensor(REF, dtype=torch.float64)
    h_strict, h_tie = H
    one_way = {"sigmoid": lambda h: -math.log(sig(BETA * h)), "ipo": lambda h: (h - 1 / (2 * BETA)) ** 2}[loss_type]

    pi = torch.tensor(PI, dtype=torch.float64, requires_grad=True)
    stats = dpo_stats(pi, ref, ranks, beta=BETA, loss_type=loss_type, ties="skip")
    assert stats.num_elements == 1 and stats.num_pairs == 1
    assert float(stats.loss.detach()) == pytest.approx(one_way(h_strict), abs=1e-12), "skip: the tie carries no term"
    stats.loss.backward()
    assert pi.grad[1].tolist() == [0.0, 0.0]

    pi = torch.tensor(PI, dtype=torch.float64, requires_grad=True)
    stats = dpo_stats(pi, ref, ranks, beta=BETA, loss_type=loss_type, ties="half")
    tie = 0.5 * one_way(h_tie) + 0.5 * one_way(-h_tie)
    if loss_type == "ipo":  # target 0: h^2 + 1/(4 beta^2)
        assert tie == pytest.approx(h_tie**2 + 1 / (4 * BETA**2), abs=1e-12)
    assert stats.num_elements == 2 and stats.num_pairs == 1, "a tie is an element but not a strict pair"
    assert float(stats.loss.detach()) == pytest.approx((one_way(h_strict) + tie) / 2, abs=1e-12)
    stats.loss.backward()
    d_tie = {"sigmoid": -BETA * 0.5 * (sig(-BETA * h_tie) - sig(BETA * h_tie)), "ipo": 2 * h_tie}[loss_type] / 2
    assert pi.grad[1].tolist() == pytest.approx([d_tie, -d_tie], abs=1e-12)


def test_stats_by_hand() -> None:
    stats = dpo_stats(torch.tensor(PI), torch.tensor(REF), torch.tensor([[0, 1], [0, 1]]), beta=BETA)
    rewards = BETA * (np.array(PI) - np.array(REF))  # the implicit rewards
    assert float(stats.accuracy) == 0.5, "h > 0 for the first pair only"
    assert float(stats.chosen_reward) == pytest.approx(rewards[:, 0].mean())
    assert float(stats.rejected_reward) == pytest.approx(rewards[:, 1].mean())
    assert float(stats.margin) == pytest.approx(BETA * np.mean(H))


def test_k_way_ranking_is_one_element_weighted_per_pair() -> None:
    # one 3-way ranking (completion 2 best, then 0, then 1) and one pair padded to K = 3
    pi = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]], dtype=torch.float64)
    ref = torch.zeros_like(pi)
    ranks = torch.tensor([[1, 2, 0], [0, 1, 0]])
    k_mask = torch.tensor([[True, True, True], [True, True, False]])
    loss = dpo_loss(pi, ref, ranks, k_mask, beta=BETA)
    l = lambda h: -math.log(sig(BETA * h))
    ranking = (l(-0.5 - -1.0) + l(-0.5 - -2.0) + l(-1.0 - -2.0)) / 3  # all C(3,2) pairs, weighted 1/3
    assert float(loss) == pytest.approx((ranking + l(-1.0 - -3.0)) / 2, abs=1e-12)


@pytest.mark.parametrize("ties", ["skip", "half"])
def test_sigmoid_dpo_is_the_ranking_loss_on_implicit_rewards(ties: str) -> None:
    gen = torch.Generator().manual_seed(0)
    pi, ref = (torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    ranks = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 1, 1], [1, 0, 0, 2], [0, 0, 0, 0], [1, 0, 0, 0]])
    k_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]).bool()
    ours = dpo_stats(pi, ref, ranks, k_mask, beta=BETA, ties=ties)
    theirs = ranking_stats(BETA * (pi - ref), ranks, k_mask, ties)
    assert float(ours.loss) == pytest.approx(float(theirs.loss), abs=1e-12)
    assert float(ours.accuracy) == pytest.approx(float(theirs.accuracy), abs=1e-12)
    assert float(ours.margin) == pytest.approx(float(theirs.margin), abs=1e-12)
    assert (ours.num_pairs, ours.num_elements) == (theirs.num_pairs, theirs.num_elements)


def test_identical_completions_carry_no_term() -> None:
    pi, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.zeros(1, 3)
    ranks = torch.tensor([[0, 1, 2]])
    same = torch.ones(1, 3, 3, dtype=torch.bool)
    same[0, 0, 2] = same[0, 2, 0] = False  # completions 0 and 2 are the same text
    stats = dpo_stats(pi, ref, ranks, pair_mask=same, beta=BETA)
    l = lambda h: -math.log(sig(BETA * h))
    assert stats.num_pairs == 2
    assert float(stats.loss.detach()) == pytest.approx((l(1.0) + l(1.0)) / 2, abs=1e-6)


def test_loss_arguments_are_checked() -> None:
    pi = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        dpo_loss(pi, torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pi, pi, torch.tensor([[0, 1], [0, 1]]), beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pi, pi, torch.tensor([[0, 1], [0, 1]]), loss_type="hinge")
    # nothing to learn: a zero that keeps the graph
    p = torch.zeros(1, 2, requires_grad=True)
    loss = dpo_loss(p, torch.zeros(1, 2), torch.tensor([[0, 0]]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and p.grad.tolist() == [[0.0, 0.0]]


# ------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"loss_type": "hinge"}, "loss_type"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"ties": "drop"}, "ties"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"eval_every": -1}, "eval_every"),
        ({"mixed_precision": "fp16"}, "mixed_precision"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DPOConfig(**kwargs)


def test_config_round_trip() -> None:
    config = DPOConfig(beta=0.2, loss_type="ipo", ties="half", max_grad_norm=None)
    assert DPOConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------- training
def test_dpo_raises_the_chosen_completion_and_heldout_accuracy(policy: Policy) -> None:
    comparisons = pairs_of(PROMPTS[:20])
    heldout = pairs_of(PROMPTS[20:])
    logger = Logger(None)
    before = [float(d[0] - d[1]) for d in (sequence_logps(policy, p, (GOOD, BAD)) for p in PROMPTS[20:])]
    agent = DPO(policy, comparisons, DPOConfig(learning_rate=3e-4, batch_size=5, eval_every=4),
                np.random.default_rng(0), logger=logger, heldout=heldout)
    agent.learn(60)
    after = [float(d[0] - d[1]) for d in (sequence_logps(policy, p, (GOOD, BAD)) for p in PROMPTS[20:])]
    assert all(a > b + 0.5 for a, b in zip(after, before)), "log pi(good) - log pi(bad) rises on held-out prompts"

    accuracy = [v for _, v in logger.history["train/dpo_heldout_accuracy"]]
    assert accuracy[0] == 0.0, "at step 0 the policy is the reference: h = 0, no pair is ordered yet"
    assert accuracy[-1] == 1.0
    margins = [v for _, v in logger.history["train/dpo_heldout_margin"]]
    assert margins[-1] > margins[0] == 0.0
    loss = [v for _, v in logger.history["train/dpo_loss"]]
    assert loss[0] == pytest.approx(math.log(2), abs=1e-4) and loss[-1] < loss[0]
    steps = [s for s, _ in logger.history["train/dpo_loss"]]
    assert steps == list(range(5, 65, 5)), "logged at comparisons used so far"
    for key in ("train/dpo_accuracy", "train/dpo_margin", "train/chosen_reward", "train/rejected_reward",
                "train/heldout_chosen_reward", "train/heldout_rejected_reward", "train/dpo_heldout_loss"):
        assert logger.history[key], key
    chosen, rejected = (logger.history[f"train/{k}_reward"][-1][1] for k in ("chosen", "rejected"))
    assert logger.history["train/dpo_margin"][-1][1] == pytest.approx(chosen - rejected)
    assert agent.num_timesteps == 60 and agent.epoch == 3
    assert all(isinstance(t, str) for t in agent.act(["the film was", "this camera is"]))


def test_micro_batches_and_k_way_give_the_same_update(tiny_model) -> None:
    comparisons = pairs_of(PROMPTS[:9]) + [
        Comparison("the plot", (GOOD, " it was fine .", BAD), (0, 1, 2)),
        Comparison("the movie", (BAD, GOOD, " it was fine .", " meh ."), (2, 0, 1, 1)),
    ]
    grads = []
    for steps in (1, 3):  # one micro-batch, or three of 3, 4 and 4 comparisons padded to different K
        policy = Policy.from_pretrained(tiny_model.path, device="cpu")
        config = DPOConfig(batch_size=11, heldout_fraction=0.0, ties="half", gradient_accumulation_steps=steps)
        DPO(policy, comparisons, config, np.random.default_rng(0)).learn(11)  # one step: the gradient stays in .grad
        grads.append({name: p.grad.clone() for name, p in policy.model.named_parameters()})
    assert any(g.abs().max() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-8)


def test_resume_is_exact(tiny_model, tmp_path: Path) -> None:
    comparisons = pairs_of(PROMPTS) + [Comparison("the plot", (GOOD, " it was fine .", BAD), (0, 1, 2))]
    # dropout on, so the torch rng state must be restored too; micro-batches and an epoch boundary on the way
    config = DPOConfig(batch_size=4, learning_rate=3e-4, heldout_fraction=0.2, disable_dropout=False,
                       gradient_accumulation_steps=2, eval_every=2)

    def fresh() -> Policy:
        return Policy.from_pretrained(tiny_model.path, device="cpu")

    torch.manual_seed(0)
    straight = DPO(fresh(), comparisons, config, np.random.default_rng(7)).learn(44)

    torch.manual_seed(0)
    first = DPO(fresh(), comparisons, config, np.random.default_rng(7)).learn(14)
    first.save(tmp_path / "ckpt")
    torch.manual_seed(123)  # whatever happens in between
    logger = Logger(None)
    resumed = DPO.load(tmp_path / "ckpt", list(reversed(comparisons)), logger=logger)
    assert resumed.num_timesteps == 16 and resumed.iteration == 4
    assert [c.prompt for c in resumed.heldout_set] == [c.prompt for c in first.heldout_set]
    resumed.learn(44)

    assert resumed.num_timesteps == straight.num_timesteps == 46, "42 < 44: one more batch of 4"
    assert resumed.epoch == straight.epoch == 3
    a, b = params(straight.policy), params(resumed.policy)
    assert all(torch.equal(a[k], b[k]) for k in a), "N steps = k steps + save/load + N-k steps"
    references = zip(straight.reference.model.parameters(), resumed.reference.model.parameters())
    assert all(torch.equal(x, y) for x, y in references)
    assert logger.history["train/dpo_loss"][0][0] == 20, "the resumed run logs from where it stopped"


def test_load_refuses_other_comparisons_and_damaged_checkpoints(policy: Policy, tmp_path: Path) -> None:
    comparisons = pairs_of(PROMPTS[:8])
    DPO(policy, comparisons, DPOConfig(batch_size=4), np.random.default_rng(0)).learn(4).save(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="not the ones this run trained on"):
        DPO.load(tmp_path / "ckpt", comparisons[:-1])
    with pytest.raises(ValueError, match="needs the comparisons"):
        DPO.load(tmp_path / "ckpt")
    state = tmp_path / "ckpt" / "trainer_state.json"
    state.write_text(state.read_text().replace('"iteration": 1', '"iteration": 9'))
    with pytest.raises(CheckpointError, match="trainer_state.json"):
        DPO.load(tmp_path / "ckpt", comparisons)
    with pytest.raises(FileNotFoundError, match="DPO checkpoint"):
        DPO.load(tmp_path / "nothing", comparisons)


# ------------------------------------------------------------------------------------- bad input
def test_only_ties_with_skip_says_what_to_do(policy: Policy) -> None:
    ties = [Comparison(p, (GOOD, BAD), (0, 0)) for p in PROMPTS[:6]]
    with pytest.raises(ValueError, match=r"all 6 comparisons are ties.*ties='half'.*strict preference"):
        DPO(policy, ties, DPOConfig(), np.random.default_rng(0))
    # with ties="half" they train: the two implicit rewards are pulled together, from h = 0 nothing moves
    agent = DPO(policy, ties, DPOConfig(ties="half", heldout_fraction=0.0, batch_size=6), np.random.default_rng(0))
    logger = agent.logger
    agent.learn(6)
    assert logger.history["train/dpo_loss"][0][1] == pytest.approx(math.log(2), abs=1e-5)
    # the held-out split took the only strict preference: the message says so
    data = ties[:5] + pairs_of(PROMPTS[:1])
    with pytest.raises(ValueError, match="held-out set holds every one.*heldout_fraction"):
        DPO(policy, data[:5], DPOConfig(), np.random.default_rng(0), heldout=data[5:])


def test_empty_and_wrong_comparisons(policy: Policy) -> None:
    with pytest.raises(ValueError, match="empty"):
        DPO(policy, [], DPOConfig(), np.random.default_rng(0))
    with pytest.raises(TypeError, match="not one Comparison"):
        DPO(policy, pairs_of(PROMPTS[:1])[0], DPOConfig(), np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rng"):
        DPO(policy, pairs_of(PROMPTS[:4]), DPOConfig(), rng=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not the policy itself"):
        DPO(policy, pairs_of(PROMPTS[:4]), DPOConfig(), np.random.default_rng(0), reference=policy)
    with pytest.raises(ValueError, match="no room"):
        DPO(policy, [Comparison("the film", (" good ." * 80, BAD), (0, 1))], DPOConfig(), np.random.default_rng(0))


def test_identical_completions_warn_and_carry_nothing(policy: Policy) -> None:
    same = [Comparison(p, (GOOD, GOOD), (0, 1)) for p in PROMPTS[:3]]
    with pytest.warns(UserWarning, match="identical copy"), pytest.raises(ValueError, match="identical copy"):
        DPO(policy, same, DPOConfig(heldout_fraction=0.0), np.random.default_rng(0))
    with pytest.warns(UserWarning, match=r"3 comparison\(s\) rank a completion above an identical copy"):
        agent = DPO(policy, same + pairs_of(PROMPTS[:3]), DPOConfig(heldout_fraction=0.0, batch_size=6),
                    np.random.default_rng(0))
    agent.learn(6)
    assert agent.logger.history["train/dpo_loss"][0][1] == pytest.approx(math.log(2), abs=1e-5), "the real pairs' mean"
    nothing = agent.evaluate_preferences(same)
    assert math.isnan(nothing["accuracy"]) and math.isnan(nothing["loss"]), "no pair of identical completions counts"
    assert agent.evaluate_preferences(pairs_of(PROMPTS[:3]))["accuracy"] == 1.0


def test_nan_loss_stops_before_the_optimizer_and_keeps_the_checkpoint(policy: Policy, tmp_path: Path) -> None:
    comparisons = pairs_of(PROMPTS[:8])
    reference = make_reference(policy)
    agent = DPO(policy, comparisons, DPOConfig(batch_size=4, heldout_fraction=0.0), np.random.default_rng(0),
                reference=reference)
    agent.save(tmp_path / "ckpt")
    on_disk = hashes(tmp_path / "ckpt")
    before = params(policy)
    with torch.no_grad():
        next(reference.model.parameters()).fill_(float("nan"))  # every reference log-prob becomes NaN
    with pytest.raises(TrainingDivergedError, match="non-finite loss.*dpo_loss.*before the optimizer step"):
        agent.learn(4)
    after = params(policy)
    assert all(torch.equal(before[k], after[k]) for k in before), "the weights are untouched"
    assert not agent.optimizer.state, "the optimizer never stepped"
    assert agent.num_timesteps == 0
    assert hashes(tmp_path / "ckpt") == on_disk, "the checkpoint is untouched"


def test_bf16_step_runs(policy: Policy) -> None:
    agent = DPO(policy, pairs_of(PROMPTS[:4]), DPOConfig(batch_size=4, heldout_fraction=0.0, mixed_precision="bf16"),
                np.random.default_rng(0))
    agent.learn(4)
    assert math.isfinite(agent.logger.history["train/dpo_loss"][0][1])
