"""UpdateStep: accumulation equals one big batch, the NaN/inf guard stops before the optimizer, clipping, scheduling."""

from __future__ import annotations

import pytest
import torch

from llm_gym.infra.update import TrainingDivergedError, UpdateStep


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


X = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [2.0, 0.0, -1.0], [1.0, 1.0, 1.0], [-2.0, 3.0, 0.5]])
Y = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0])


def _step(micro_sizes: list[int]) -> torch.Tensor:
    model = _model()
    update = UpdateStep(torch.optim.SGD(model.parameters(), lr=0.1), [model], max_grad_norm=None)
    with update.accumulate():
        start = 0
        for k, size in enumerate(micro_sizes):
            with update.micro(sync=k + 1 == len(micro_sizes)):
                sl = slice(start, start + size)
                with update.autocast():
                    err = (model(X[sl]).squeeze(-1) - Y[sl]) ** 2
                update.backward(err.sum() * update.scale(len(X)), {"mse": err.mean()})
            start += size
    assert update.steps == 1
    return torch.cat([model.weight.detach().flatten(), model.bias.detach()])


def test_micro_batches_give_the_update_of_the_whole_batch() -> None:
    whole = _step([5])
    assert torch.allclose(_step([2, 3]), whole, atol=1e-7)
    assert torch.allclose(_step([1, 1, 1, 1, 1]), whole, atol=1e-7)
    # by hand: SGD on the mean squared error of the whole batch
    model = _model()
    loss = ((model(X).squeeze(-1) - Y) ** 2).mean()
    loss.backward()
    expected = torch.cat([(model.weight - 0.1 * model.weight.grad).flatten(), model.bias - 0.1 * model.bias.grad]).detach()
    assert torch.allclose(whole, expected, atol=1e-7)


def test_a_non_finite_loss_stops_before_the_optimizer_step() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    update = UpdateStep(torch.optim.SGD(model.parameters(), lr=0.1), [model], hint="lower learning_rate")
    update.context = "at iteration 4"
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss, value_loss at iteration 4 .*before the optimizer step.*Lower learning_rate"):
        with update.accumulate():
            with update.micro(sync=True):
                out = model(X).sum()
                update.backward(out * float("nan"), {"value_loss": torch.tensor(float("inf")), "ok": torch.tensor(1.0)})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and update.steps == 0


def test_a_non_finite_gradient_norm_skips_the_step() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    model.bias.register_hook(lambda g: g * float("inf"))
    update = UpdateStep(torch.optim.SGD(model.parameters(), lr=0.1), [model], max_grad_norm=1.0)
    with pytest.raises(TrainingDivergedError, match="non-finite gradient norm; the optimizer step was skipped"):
        with update.accumulate():
            with update.micro(sync=True):
                update.backward(model(X).sum())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # nothing half-applied is left for the next step


def test_clipping_and_the_scheduler() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    update = UpdateStep(opt, [model], max_grad_norm=0.01, scheduler=sched)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    with update.accumulate():
        with update.micro(sync=True):
            update.backward(model(X).sum() * 100)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert update.grad_norm > 0.01  # the norm before clipping is reported
    assert float((after - before).norm()) == pytest.approx(0.01, rel=1e-4)  # lr 1 x the clipped norm
    assert sched.get_last_lr() == [0.5]
