"""Checkpoint folders sealed by a manifest: any changed, missing or added file is refused by name; old folders still load."""

from __future__ import annotations

import json
import logging

import pytest

from llm_gym.agents.checkpoint import (
    MANIFEST,
    CheckpointError,
    open_checkpoint,
    read_json,
    reading,
    verify_manifest,
    write_checkpoint,
)

FIX = "delete it to start again"


def sealed(tmp_path):
    path = tmp_path / "ckpt"
    with write_checkpoint(path) as tmp:
        (tmp / "state.json").write_text('{"iteration": 3}')
        (tmp / "policy").mkdir()
        (tmp / "policy" / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    return path


def flip_byte(file, index: int = -5) -> None:
    data = bytearray(file.read_bytes())
    data[index] ^= 0x01
    file.write_bytes(bytes(data))


def test_a_sealed_checkpoint_opens_and_its_manifest_is_written_last(tmp_path) -> None:
    path = sealed(tmp_path)
    assert open_checkpoint(path, marker="state.json", kind="test checkpoint", fix=FIX) == path
    assert verify_manifest(path, fix=FIX) is True
    listed = json.loads((path / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["policy/model.safetensors", "state.json"], "written after the block: it covers every file"
    assert read_json(path / "state.json", fix=FIX) == {"iteration": 3}


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: flip_byte(p / "policy" / "model.safetensors"), r"damaged: policy/model\.safetensors is not the file"),
        (lambda p: (p / "state.json").write_text('{"iteration": 4}'), r"damaged: state\.json is not the file"),
        (lambda p: (p / "policy" / "model.safetensors").unlink(), r"incomplete: policy/model\.safetensors .* missing"),
        (lambda p: (p / "policy" / "adapter_config.json").write_text("{}"), r"policy/adapter_config\.json, which was not saved"),
        (lambda p: (p / MANIFEST).write_text("{not json"), rf"{MANIFEST} is damaged"),
    ],
    ids=["flipped-byte", "edited", "missing", "added", "manifest"],
)
def test_damage_is_refused_naming_the_file_and_the_way_out(tmp_path, damage, match) -> None:
    path = sealed(tmp_path)
    damage(path)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=match) as err:
        open_checkpoint(path, marker="state.json", kind="test checkpoint", fix=FIX)
    assert str(err.value).endswith(FIX)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before, "a refused checkpoint is not touched"


def test_hidden_files_are_not_part_of_the_check(tmp_path) -> None:
    path = sealed(tmp_path)
    (path / ".DS_Store").write_text("a file manager's litter")
    assert verify_manifest(path, fix=FIX)


def test_a_checkpoint_without_manifest_loads_with_a_note(tmp_path, caplog) -> None:
    path = sealed(tmp_path)
    (path / MANIFEST).unlink()
    flip_byte(path / "policy" / "model.safetensors")  # undetectable without a manifest: that is what the note says
    with caplog.at_level(logging.WARNING, logger="llm_gym.agents.checkpoint"):
        assert open_checkpoint(path, marker="state.json", kind="test checkpoint", fix=FIX) == path
        assert verify_manifest(path, fix=FIX) is False
    assert "has no manifest.json" in caplog.text and "without an integrity check" in caplog.text


def test_no_checkpoint_and_unreadable_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"is not a test checkpoint \(no state\.json\)"):
        open_checkpoint(tmp_path / "nothing", marker="state.json", kind="test checkpoint", fix=FIX)
    bad = tmp_path / "state.json"
    bad.write_text('{"iteration": ')
    with pytest.raises(CheckpointError, match=r"state\.json cannot be loaded \(JSONDecodeError: .*\); restore it from a copy, or delete"):
        read_json(bad, fix=FIX)
    with pytest.raises(CheckpointError, match=r"weights\.pt cannot be loaded \(KeyError: 'optimizer'\)"):
        with reading(tmp_path / "weights.pt", fix=FIX):
            {}["optimizer"]


def test_an_error_in_the_block_leaves_the_previous_checkpoint(tmp_path) -> None:
    path = sealed(tmp_path)
    with pytest.raises(RuntimeError):
        with write_checkpoint(path) as tmp:
            (tmp / "state.json").write_text("half")
            raise RuntimeError("crash mid-save")
    assert read_json(path / "state.json", fix=FIX) == {"iteration": 3}
    assert verify_manifest(path, fix=FIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft on transformers 5
@pytest.mark.parametrize("fate", ["moved", "rewritten"])
def test_a_lora_policy_with_another_reference_resumes_from_its_own_base(tiny_model, tmp_path, fate) -> None:
    """The checkpoint carries the policy's base (`base/`) when the reference is not that base, so the resume does
    not depend on where the adapter config says the base was."""
    pytest.importorskip("peft")
    import torch
    from transformers import AutoTokenizer

    from doubles import tiny_llama, tiny_llama_folder
    from llm_gym import Policy, SamplingConfig
    from llm_gym.agents.checkpoint import load_policy_and_reference, save_policy_and_reference
    from llm_gym.agents.reference import make_reference

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    base_path = tiny_llama_folder(tmp_path / "base_model", tokenizer)
    policy = Policy.from_pretrained(base_path, device="cpu",
                                    peft_config={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # a trained adapter
    reference = make_reference(Policy(tiny_llama(tokenizer, seed=1), tokenizer, device="cpu"))  # not the policy's base
    folder = tmp_path / "ckpt"
    with write_checkpoint(folder) as tmp:
        state = save_policy_and_reference(policy, reference, tmp)
    if fate == "moved":
        base_path.rename(tmp_path / "elsewhere")  # the adapter config names a base that is gone
    else:
        tiny_llama_folder(base_path, tokenizer, seed=2)  # a rerun rewrote the base folder with other weights
    loaded, loaded_ref = load_policy_and_reference(folder, state, device="cpu", fix=FIX)
    assert loaded.is_peft and loaded_ref is not None and not loaded_ref.is_peft
    sampling = SamplingConfig(max_new_tokens=6)
    rollout = policy.sample(["the film was", "the hotel is"], sampling, seed=0)
    with torch.no_grad():
        assert torch.allclose(loaded.log_probs(rollout, sampling), policy.log_probs(rollout, sampling), atol=1e-6)
        assert torch.allclose(loaded_ref.log_probs(rollout, sampling), reference.log_probs(rollout, sampling),
                              atol=1e-6)
    assert any(p.requires_grad for p in loaded.model.parameters())  # ready to train on
