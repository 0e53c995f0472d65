"""Gradient checkpointing (`checkpointed_layers`) under the attention kernel a precision chooses."""

from __future__ import annotations

import contextlib

import pytest
import torch

from llm_gym import Policy
from llm_gym.infra.distributed import Distributed
from llm_gym.models.lm import checkpointed_layers


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_checkpointed_layers_recompute_on_the_forwards_kernel_also_when_backpropagated_twice(precision,
                                                                                            policy: Policy) -> None:
    """The recomputation runs in the backward pass, after the forward's autocast block has closed: in bf16 on CPU it
    must still use the math kernel the forward used (else checkpoint fails: the recomputed tensors differ from the
    saved ones), and a graph back-propagated twice recomputes twice. The gradients equal those without checkpointing."""
    model = policy.model
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    amp = Distributed.autocast(precision, torch.device("cpu"))
    grads = []
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        with checkpointed_layers(model, on), contextlib.ExitStack() as stack:
            stack.enter_context(amp)
            loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
            stack.close()  # the backward outside the autocast block, as the agents run it
            loss.backward(retain_graph=True)
            loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert torch.backends.cuda.flash_sdp_enabled() and not torch.is_autocast_enabled("cpu")  # all restored
