"""The language-model policy: a Hugging Face causal LM + tokenizer as an RL agent's policy.

`Policy.sample` draws completions for a batch of prompts with the KV cache and returns the
token ids, masks and the per-token log-probs of what it sampled; `Policy.log_probs`
recomputes those log-probs in one forward pass (what PPO needs for the ratio and the KL to
the reference). Both go through the same `process_logits`, so the log-probs are those of
the distribution the tokens were actually drawn from (temperature, top-k and top-p
included). That is what keeps the KL penalty meaningful: log-probs computed under other
settings than sampling are the usual cause of a negative "KL" in LM PPO
(`tests/models/test_policy.py` checks that the two agree for each setting).

Layout of a batch: prompts are left-padded (`prompt_mask` 0 on the left), completions are
right-padded (`completion_mask` 1 for every generated token up to and including EOS).
Position ids count real tokens only, so a left-padded prompt is seen exactly as an
unpadded one (`llm_gym.models.text` tokenises, cuts and pads for every model here).

LoRA and the other PEFT adapters (the optional `peft` package) are first class: pass
`peft_config=` to `Policy` or `Policy.from_pretrained` to train an adapter on a frozen base, and
`from_pretrained` on a folder that `save_pretrained` wrote (the adapter only) loads base +
adapter. The KL reference of such a policy is the same module with its adapter switched off
(`llm_gym.agents.reference.make_reference`), so the base weights are held once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.infra.configio import check_finite
from llm_gym.models.text import append_eos, encode, pad_left, pad_right, position_ids, truncate_left, truncate_left_all

if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = ["Evaluation", "Policy", "Rollout", "SamplingConfig", "process_logits", "default_device", "add_peft_adapter",
           "attach_adapter", "base_state_dict", "is_adapter_param", "is_peft_model", "require_peft", "to_peft_config"]

_log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_peft() -> Any:
    """The `peft` module, imported on first use (an optional extra); `ImportError` with the install line if absent."""
    try:
        import peft
    except ImportError as exc:
        raise ImportError("LoRA/PEFT adapters need the peft package: pip install peft "
                          "(or pip install llm-gym[peft])") from exc
    return peft


def is_peft_model(model: object) -> bool:
    """Whether `model` is a `peft.PeftModel` (a base model with an adapter); False without importing peft."""
    peft = sys.modules.get("peft")  # a model cannot be a PeftModel unless peft was imported to make it
    return peft is not None and isinstance(model, peft.PeftModel)


def to_peft_config(config: PeftConfig | Mapping[str, Any], task_type: str | None = "CAUSAL_LM") -> PeftConfig:
    """A `peft.PeftConfig` from a config (as is) or a dict of LoRA fields (`LoraConfig(task_type=..., **fields)`).

    A dict is what a TOML config holds: `{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}`.
    `task_type` is the PEFT task a dict is built for ("CAUSAL_LM" for a policy; None for a bare
    backbone such as the reward model's), unless the dict names one itself.
    """
    peft = require_peft()
    if isinstance(config, peft.PeftConfig):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"peft_config must be a peft.PeftConfig (e.g. peft.LoraConfig(r=8, ...)) or a dict of "
                        f"LoraConfig fields, got {type(config).__name__}")
    fields = dict(config)
    if task_type is not None:
        fields.setdefault("task_type", task_type)
    try:
        return peft.LoraConfig(**fields)
    except TypeError as exc:
        raise ValueError(f"peft_config {fields!r} is not a valid LoraConfig ({exc}); use the fields of "
                         "peft.LoraConfig, e.g. {'r': 8, 'lora_alpha': 16, 'target_modules': ['q_proj', 'v_proj']}"
                         ) from exc


def add_peft_adapter(model: PreTrainedModel, peft_config: PeftConfig | Mapping[str, Any], task_type: str | None) -> Any:
    """`model` wrapped by `peft.get_peft_model`: the adapter trains, the base weights are frozen (changed in place)."""
    peft = require_peft()
    if is_peft_model(model):
        raise ValueError("the model already carries a PEFT adapter; pass peft_config only with a plain model")
    was_training = model.training
    wrapped = peft.get_peft_model(model, to_peft_config(peft_config, task_type))
    # peft leaves the model in train mode; keep the mode it was given in (eval, as loaded)
    return wrapped.train(was_training)


def is_adapter_param(peft_model: Any, name: str) -> bool:
    """Whether parameter `name` of a PEFT model is an adapter's (its tuner's prefix, e.g. `lora_`; a trained copy)."""
    prefix = getattr(peft_model.base_model, "prefix", "lora_")
    return prefix in name or ".modules_to_save." in name


_SAVE_THE_ADAPTER = ("save the adapter instead (policy.save_pretrained(path), which Policy.from_pretrained(path) loads "
                     "on its base), or train a plain LoRA adapter")


def base_state_dict(peft_model: Any, *, merged: bool = False) -> dict[str, torch.Tensor]:
    """The base model's state dict under its own names: adapter tensors dropped, peft's wrapper names undone.

    With `merged=False` these are the base weights the adapter sits on (a wrapped module's
    `original_module`, not its trained copy). `merged=True` gives instead the weights of a plain
    model that computes what the adapted one does: each LoRA layer's weight with its delta added
    (`W + (alpha / r) B A`, Hu et al. 2021, eq. 3; on an embedding, a linear or GPT-2's Conv1D),
    a DoRA layer's weight rescaled by its magnitude (peft's own `merge_safe`), a LoRA bias added
    to the layer's bias, and a `modules_to_save` module's trained copy in place of the original.
    Adapted weights are computed one layer at a time into new tensors; every other tensor is the
    live model's own (no copy of the model), and the live model is left as it is (nothing is
    merged in place and unmerged again, which would round the base weights).

    Where a merge moves one of two tied weights (LoRA on GPT-2's input embedding, whose output
    layer reads the un-adapted matrix), the two names get different tensors: save them untied
    (`Policy.save_pretrained(merged=True)` does).

    Raises:
        ValueError: `merged=True` on an adapter this cannot merge exactly (a tuner other than LoRA,
            such as LoHa, LoKr or IA3; a LoRA variant other than DoRA; trainable tokens); the
            message says to save the adapter instead.
    """
    base = peft_model.get_base_model()
    state = base.state_dict()
    if merged:
        state.update(_merged_weights(peft_model, base))
    return {re.sub(r"\.(base_layer|original_module)\.", ".", name): tensor for name, tensor in state.items()
            if not is_adapter_param(peft_model, name)}


@torch.no_grad()
def _merged_weights(peft_model: Any, base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name in `base.state_dict()`: merged tensor} for each weight the adapter changes (see `base_state_dict`)."""
    peft = require_peft()
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    kinds = {str(getattr(config.peft_type, "value", config.peft_type)) for config in peft_model.peft_config.values()}
    if kinds != {str(peft.PeftType.LORA.value)}:
        raise ValueError(f"a merged save supports LoRA (and DoRA) adapters only, this model has {sorted(kinds)}; "
                         + _SAVE_THE_ADAPTER)
    out: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ModulesToSaveWrapper):
            active = module.active_adapters
            if not module.disable_adapters and active and all(a in module.modules_to_save for a in active):
                # forward runs the active adapter's trained copy: write it under the original module's names
                out.update({f"{prefix}original_module.{key}": tensor
                            for key, tensor in module.modules_to_save[active[0]].state_dict().items()})
        elif isinstance(module, AuxiliaryTrainingWrapper):
            raise ValueError(f"{name} is a {type(module).__name__} (e.g. trainable_token_indices), which a merged save "
                             "does not support; " + _SAVE_THE_ADAPTER)
        elif isinstance(module, LoraLayer):
            weight, bias = _merged_lora_layer(name, module)
            if weight is not None:
                out[f"{prefix}base_layer.weight"] = weight
            if bias is not None:
                out[f"{prefix}base_layer.bias"] = bias
        elif isinstance(module, BaseTunerLayer):
            raise ValueError(f"{name} is a {type(module).__name__}, which a merged save does not support; "
                             + _SAVE_THE_ADAPTER)
    return out


def _merged_lora_layer(name: str, layer: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(merged weight, merged bias) of one LoRA layer as its forward computes it; None where nothing changes."""
    from peft.tuners.lora import Embedding, Linear
    from peft.tuners.lora.layer import _ConvNd

    if not isinstance(layer, (Linear, Embedding, _ConvNd)):  # e.g. quantized or multi-head-attention LoRA layers
        raise ValueError(f"{name} is a LoRA layer of type {type(layer).__name__}, which a merged save does not "
                         "support; " + _SAVE_THE_ADAPTER)
    if layer.disable_adapters:
        return None, None
    adapters = [a for a in layer.active_adapters if a in layer.lora_A or a in layer.lora_embedding_A]
    if not adapters:
        return None, None
    if layer.merged_adapters:
        raise ValueError(f"{name} has adapters merged into its weights in place (merge_adapter); unmerge them first "
                         "(peft_model.unmerge_adapter()), then save merged")
    variants = {a: layer.lora_variant[a] for a in adapters if a in layer.lora_variant}
    unsupported = {type(v).__name__ for v in variants.values() if not type(v).__name__.startswith("Dora")}
    if unsupported:
        raise ValueError(f"{name} uses the LoRA variant {sorted(unsupported)}, which a merged save does not support; "
                         + _SAVE_THE_ADAPTER)
    if variants and len(adapters) > 1:
        raise ValueError(f"{name} has {len(adapters)} active adapters, one of them DoRA, which a merged save does not "
                         "support; activate one adapter (peft_model.set_adapter(name)) or " + _SAVE_THE_ADAPTER)
    base_layer = layer.get_base_layer()
    weight = base_layer.weight.detach()
    bias = None
    for adapter in adapters:
        if adapter in variants:
            # DoRA: peft's safe merge returns a new tensor (the magnitude over the norm of W + delta, times W + delta);
            # drop the weight norm it caches for an unmerge that never comes
            weight = variants[adapter].merge_safe(layer, adapter, weight)
            layer._caches.pop(f"{adapter}-weight_norm", None)
        else:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        if layer.lora_bias.get(adapter, False):
            lora_b = layer.lora_B[adapter].bias.detach() * layer.scaling[adapter]
            bias = (base_layer.bias.detach() if bias is None else bias) + lora_b.to(base_layer.bias.dtype)
    return weight.contiguous(), bias


def _merged_for_saving(peft_model: Any) -> tuple[dict[str, torch.Tensor], bool]:
    """(merged state dict, whether the saved config must untie the word embeddings) for `save_pretrained(merged=True)`.

    Names that share one tensor in the live model (tied weights) keep sharing it when the merge
    leaves them equal; when it moves one of them, the tie is broken, which only the word
    embeddings' tie can express in a config (`tie_word_embeddings=False`).
    """
    state = base_state_dict(peft_model, merged=True)
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in base_state_dict(peft_model).items():  # the live tensors: ties show as shared storage
        groups.setdefault((tensor.untyped_storage().data_ptr(), tuple(tensor.shape)), []).append(name)
    untie = False
    for names in (names for names in groups.values() if len(names) > 1):
        first = state[names[0]]
        if all(torch.equal(state[n], first) for n in names[1:]):
            state.update(dict.fromkeys(names, first))  # still tied: one tensor, saved once
            continue
        config = peft_model.get_base_model().config
        if not getattr(config, "tie_word_embeddings", False):
            raise ValueError(f"merging the adapter moves {names[0]} away from the weights tied to it ({names[1:]}), "
                             "a tie this model's config cannot undo; save the adapter instead (save_pretrained(path))")
        untie = True
    return state, untie


def _cache_from(out: Any) -> tuple[str, Any]:
    """(keyword, cache) of a forward pass's KV cache: transformers' current name `cache`, or older `past_key_values`.

    The output's own fields say which API the model speaks, so the cache goes back under the
    name the model reads (a name it does not know would be swallowed by `**kwargs`, silently
    dropping the cache) and the deprecated alias is never touched where `cache` exists.
    """
    if any(f.name == "cache" for f in dataclasses.fields(out)):
        return "cache", out.cache
    return "past_key_values", out.past_key_values


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (and therefore which distribution the log-probs describe)."""

    max_new_tokens: int = 32
    """Upper bound on generated tokens per completion."""
    temperature: float = 1.0
    """Logits are divided by this before softmax; must be > 0 (1.0 = the model's own distribution)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1.0 = off)."""
    stop_at_eos: bool = True
    """Stop a completion at the tokenizer's EOS token (the EOS is part of the completion)."""

    def __post_init__(self) -> None:
        check_finite(self)
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r} "
                             "(use a small value such as 0.01 for near-greedy)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")

    def greedy(self) -> SamplingConfig:
        """These settings decoding greedily (`top_k=1`: the most likely token each step), as `deterministic=True` and
        greedy accuracy mean it."""
        return dataclasses.replace(self, top_k=1)


def process_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k and top-p to `logits` (..., vocab); filtered entries become -inf.

    The result's `log_softmax` is the sampling distribution. Used both when sampling and
    when recomputing log-probs, so the two always describe the same distribution.
    """
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Rollout(NamedTuple):
    """A batch of sampled completions. Tensors are on the policy's device."""

    prompt_ids: torch.Tensor
    """(B, P) prompt token ids, left-padded."""
    prompt_mask: torch.Tensor
    """(B, P) 1 for real prompt tokens."""
    completion_ids: torch.Tensor
    """(B, T) sampled token ids, right-padded with the pad id."""
    completion_mask: torch.Tensor
    """(B, T) 1 for generated tokens (EOS included), 0 after a completion stopped."""
    logprobs: torch.Tensor
    """(B, T) float32 log-prob of each sampled token under the sampling distribution; 0 where masked."""
    prompts: list[str]
    """The prompt texts as given."""
    completions: list[str]
    """The decoded completions, special tokens (EOS) removed."""
    num_truncated_prompts: int
    """How many prompts were cut on the left to fit the context (see `Policy.overflow`)."""


class Evaluation(NamedTuple):
    """What `Policy.evaluate` computes for given completions."""

    logprobs: torch.Tensor
    """(B, T) log-prob of each completion token; 0 where masked."""
    entropy: torch.Tensor
    """(B, T) entropy of the sampling distribution before each token; 0 where masked."""
    hidden: torch.Tensor | None
    """(B, T, H) final hidden state before each token (for a value head), when asked for."""


class Policy:
    """A causal LM + tokenizer that samples completions and scores them.

    Args:
        model: any Hugging Face causal LM (`AutoModelForCausalLM`).
        tokenizer: its tokenizer; a missing pad token is set to EOS.
        device: where to run; CUDA when present by default.
        overflow: what to do with a prompt longer than the context leaves room for
            (`context - max_new_tokens` tokens): `"truncate_left"` keeps its end (and a
            leading BOS) and counts it, `"reject"` raises `ValueError`.
        peft_config: train a PEFT adapter instead of the whole model: a `peft.LoraConfig` (or
            any `PeftConfig`), or a dict of LoRA fields (`{"r": 8, "lora_alpha": 16,
            "target_modules": [...]}`). The model is wrapped by `peft.get_peft_model` (in place:
            its own weights are frozen) and `is_peft` is True. LoRA's A matrices are drawn from
            torch's global generator: call `torch.manual_seed(seed)` first for a reproducible
            adapter (the pipeline does). Needs `pip install llm-gym[peft]`.

    Example:
        >>> policy = Policy.from_pretrained("gpt2")  # doctest: +SKIP
        >>> rollout = policy.sample(["the film was"], SamplingConfig(max_new_tokens=8), seed=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device | str | None = None,
        overflow: Literal["truncate_left", "reject"] = "truncate_left",
        peft_config: PeftConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if overflow not in ("truncate_left", "reject"):
            raise ValueError(f"overflow must be 'truncate_left' or 'reject', got {overflow!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token so completions can stop")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2 convention; pads are always masked out
        if getattr(model, "_hf_peft_config_loaded", False) and not is_peft_model(model):
            # transformers' own adapter loading leaves the adapter frozen and the base trainable: the wrong way round
            raise ValueError("this model carries an adapter loaded by transformers "
                             "(AutoModelForCausalLM.from_pretrained on an adapter folder); load the folder with "
                             "Policy.from_pretrained(path), which trains the adapter and freezes the base")
        if peft_config is not None:
            model = add_peft_adapter(model, peft_config, "CAUSAL_LM")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.overflow = overflow
        self.num_truncated_prompts = 0
        """Running count of prompts truncated to fit the context."""
        cfg = model.config
        self.context_length: int = int(
            getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        overflow: Literal["truncate_left", "reject"] = "truncate_left",
        peft_config: PeftConfig | Mapping[str, Any] | None = None,
        is_trainable: bool = True,
        **model_kwargs: object,
    ) -> Policy:
        """Load model and tokenizer by Hub name or local path, exactly as `AutoModelForCausalLM` does.

        A folder holding a saved adapter (`adapter_config.json`, as `save_pretrained` writes for
        a PEFT policy) loads the base model its config names, then the adapter on top
        (`peft.PeftModel.from_pretrained`), trainable unless `is_trainable=False`: a policy is
        loaded to be trained or resumed, where peft's own default freezes it. `peft_config`
        puts a new adapter on a plain model (see `Policy`).
        """
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        folder = Path(name_or_path)
        if (folder / "adapter_config.json").is_file():
            if peft_config is not None:
                raise ValueError(f"{folder} already holds an adapter; load it without peft_config, or pass peft_config "
                                 "with the base model's path to start a new one")
            model, tokenizer_source = _load_with_adapter(folder, is_trainable, model_kwargs)
            return cls(model, AutoTokenizer.from_pretrained(tokenizer_source), device=device, overflow=overflow)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **model_kwargs)
        return cls(model, tokenizer, device=device, overflow=overflow, peft_config=peft_config)

    def save_pretrained(self, path: str | PathLike[str], *, merged: bool = False) -> None:
        """Save model and tokenizer so that `Policy.from_pretrained(path)` restores them.

        A PEFT policy saves its adapter only (peft's `save_pretrained`: `adapter_config.json`,
        which names the base model, and `adapter_model.safetensors`), not the base weights;
        with `merged=True` it saves a plain model instead, the adapter merged into the base
        weights (a folder that loads without peft or the base, as the pipeline's stages hand
        their policies on), computing what the adapted model computes (see `base_state_dict`).
        LoRA on a tied input embedding (GPT-2's `wte`) leaves the output layer on the un-adapted
        matrix, so such a merged model is written untied (`tie_word_embeddings=False`, both
        matrices saved). A plain policy ignores `merged`.

        Raises:
            ValueError: `merged=True` on an adapter that cannot be merged exactly (not LoRA/DoRA);
                save the adapter instead (`save_pretrained(path)`).
        """
        if merged and self.is_peft:
            state, untie = _merged_for_saving(self.model)
            self.model.get_base_model().save_pretrained(path, state_dict=state)
            if untie:  # the merged input embedding no longer equals the output layer: both matrices are written
                config = AutoConfig.from_pretrained(path)
                for part in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
                    part.tie_word_embeddings = False
                config.save_pretrained(path)
        else:
            self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @property
    def is_peft(self) -> bool:
        """Whether the model is a PEFT model (a frozen base with a trainable adapter)."""
        return is_peft_model(self.model)

    # ------------------------------------------------------------------ encoding
    def encode_prompts(self, prompts: Sequence[str], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Tokenize and left-pad prompts; apply the overflow policy. Returns (ids, mask, num_truncated)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string; wrap it: [prompt]")
        if len(prompts) == 0:
            raise ValueError("prompts is empty; pass at least one prompt")
        limit = self.context_length - max_new_tokens
        if limit < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {self.context_length} "
                "tokens"
            )
        encoded = encode(self.tokenizer, prompts)
        if self.overflow == "reject":
            for i, ids in enumerate(encoded):
                if len(ids) > limit:
                    raise ValueError(
                        f"prompt {i} has {len(ids)} tokens but the context ({self.context_length}) minus "
                        f"max_new_tokens ({max_new_tokens}) leaves {limit}; shorten it, lower max_new_tokens, or use "
                        "overflow='truncate_left'"
                    )
        encoded, truncated = truncate_left_all(encoded, limit, self.tokenizer.bos_token_id)
        if truncated:
            self.num_truncated_prompts += truncated
            _log.warning("truncated %d prompt(s) on the left to fit %d tokens (total so far: %d)", truncated, limit,
                         self.num_truncated_prompts)
        ids, mask = pad_left(encoded, self.tokenizer.pad_token_id)
        if (mask.sum(-1) == 0).any():
            raise ValueError("a prompt encoded to zero tokens; give non-empty prompts")
        return ids.to(self.device), mask.to(self.device), truncated

    def encode_pairs(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenize given (prompt, completion) pairs into the four tensors `evaluate` and `log_probs` take.

        For scoring completions that were not sampled in this batch (DPO's preference pairs).
        The prompt is read as `encode_prompts` reads it (the tokenizer's BOS convention,
        left-padded); the completion as a continuation with nothing added, followed by EOS
        (as `sft_batch` tokenises an answer after its prompt, and as `sample` ends a
        completion; a completion that ends with its own EOS, as a chat-rendered one does,
        gets none added), right-padded. `completion_mask` is 1 on the completion's tokens and its
        EOS, so `log_probs(...).sum(-1)` is log pi(completion + EOS | prompt). A prompt that
        leaves no room for its own completion in the context is cut on the left (keeping a
        leading BOS, counted in `num_truncated_prompts`) or refused, as `overflow` says.

        Returns:
            (prompt_ids, prompt_mask, completion_ids, completion_mask), each (B, ·) long, on the policy's device.

        Raises:
            ValueError: the lists differ in length or are empty, a prompt encodes to no token, a
                completion (with its EOS) fills the whole context, or (overflow="reject") a pair
                does not fit.
        """
        for name, texts in (("prompts", prompts), ("completions", completions)):
            if isinstance(texts, str):
                raise TypeError(f"{name} must be a list of strings, not one string; wrap it: [{name[:-1]}]")
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; they must pair up")
        if len(prompts) == 0:
            raise ValueError("nothing to encode; pass at least one (prompt, completion) pair")
        tok = self.tokenizer
        # a chat-rendered completion already ends with the template's end-of-turn EOS: end it with exactly one
        answers = append_eos(encode(tok, completions, special_tokens=False), tok.eos_token_id, unless_present=True)
        rows, truncated = [], 0
        for i, (ids, answer) in enumerate(zip(encode(tok, prompts), answers)):
            limit = self.context_length - len(answer)  # room left for this pair's prompt
            if limit < 1:
                raise ValueError(f"completion {i} has {len(answer)} tokens with its EOS, which leaves no room for its "
                                 f"prompt in a context of {self.context_length} tokens; shorten it")
            if len(ids) > limit:
                if self.overflow == "reject":
                    raise ValueError(
                        f"prompt {i} has {len(ids)} tokens but its completion's {len(answer)} leave it {limit} of the "
                        f"context ({self.context_length}); shorten it, or use overflow='truncate_left'"
                    )
                ids, truncated = truncate_left(ids, limit, tok.bos_token_id), truncated + 1
            rows.append(ids)
        if truncated:
            self.num_truncated_prompts += truncated
            _log.warning("truncated %d prompt(s) on the left to fit their completions (total so far: %d)", truncated,
                         self.num_truncated_prompts)
        prompt_ids, prompt_mask = pad_left(rows, tok.pad_token_id)
        if (prompt_mask.sum(-1) == 0).any():
            raise ValueError("a prompt encoded to zero tokens; give non-empty prompts")
        answer_batch = pad_right(answers, tok.pad_token_id)
        return (prompt_ids.to(self.device), prompt_mask.to(self.device), answer_batch.input_ids.to(self.device),
                answer_batch.attention_mask.to(self.device))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()  # not inference_mode: PPO later uses these tensors in autograd graphs
    def sample(
        self,
        prompts: Sequence[str],
        config: SamplingConfig = SamplingConfig(),
        seed: int | torch.Generator | None = None,
    ) -> Rollout:
        """Sample one completion per prompt with the KV cache; see `Rollout` for what comes back.

        Args:
            prompts: the prompt texts.
            config: sampling controls (temperature, top-k/top-p, max new tokens, EOS stop).
            seed: an int seed or a `torch.Generator` on the policy's device; the same seed gives
                the same samples.
        """
        gen = as_generator(seed, self.device)
        prompt_ids, prompt_mask, truncated = self.encode_prompts(prompts, config.max_new_tokens)
        batch = prompt_ids.shape[0]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()

        positions = position_ids(prompt_mask)
        out = self.model(
            input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        (cache_arg, cache), logits = _cache_from(out), out.logits[:, -1, :]
        next_pos = positions[:, -1:] + 1
        attn = prompt_mask
        alive = torch.ones(batch, dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for step in range(config.max_new_tokens):
            logp = torch.log_softmax(process_logits(logits.float(), config), dim=-1)
            tok = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
            tokens.append(torch.where(alive, tok, pad))
            logps.append(torch.where(alive, logp.gather(-1, tok[:, None]).squeeze(-1), 0.0))
            masks.append(alive)
            if config.stop_at_eos:
                alive = alive & (tok != eos)
                if not alive.any():
                    break
            if step + 1 == config.max_new_tokens:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self.model(
                input_ids=tokens[-1][:, None], attention_mask=attn, position_ids=next_pos, use_cache=True,
                **{cache_arg: cache},
            )
            (cache_arg, cache), logits = _cache_from(out), out.logits[:, -1, :]
            next_pos = next_pos + 1
        self.model.train(was_training)

        completion_ids = torch.stack(tokens, dim=1)
        completion_mask = torch.stack(masks, dim=1).long()
        texts = self.tokenizer.batch_decode(
            [row[: int(m.sum())].tolist() for row, m in zip(completion_ids, completion_mask)], skip_special_tokens=True
        )
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=torch.stack(logps, dim=1),
            prompts=list(prompts),
            completions=texts,
            num_truncated_prompts=truncated,
        )

    # ------------------------------------------------------------------ scoring
    def evaluate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        config: SamplingConfig = SamplingConfig(),
        with_hidden: bool = False,
        model: torch.nn.Module | None = None,
        entropy: Literal["grad", "value", "none"] = "grad",
    ) -> Evaluation:
        """One forward pass over prompt + completion: per-token log-probs, entropies and (optionally) hidden states.

        Position t of each output describes the state just before completion token t, under
        the sampling distribution of `config`. Differentiable when grad is enabled (PPO's
        ratio and value head use this); masked positions are 0. `model` runs the forward pass
        instead of `self.model` (the data-parallel wrapper of the same model, when training).
        `entropy`: "grad" (differentiable, for a loss with an entropy bonus), "value" (computed
        without a graph: a loss that does not use it skips the backward pass through the whole
        vocabulary) or "none" (not computed: zeros; for log-probs alone, as the reference's).
        """
        if entropy not in ("grad", "value", "none"):
            raise ValueError(f"entropy must be 'grad', 'value' or 'none', got {entropy!r}")
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        positions = position_ids(mask)
        steps = completion_ids.shape[1]
        # logits at position j predict token j+1: keep the last T+1 positions, drop the final one
        out = (model if model is not None else self.model)(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=steps + 1,
            output_hidden_states=with_hidden,
            use_cache=False,  # one pass, nothing to continue from: no key/value cache to build (or to recompute)
        )
        logp = torch.log_softmax(process_logits(out.logits[:, :-1].float(), config), dim=-1)
        token_logp = logp.gather(-1, completion_ids[..., None]).squeeze(-1)
        keep = completion_mask.bool()
        zero = torch.zeros_like(token_logp)
        if entropy == "none":
            ent = zero
        elif entropy == "value" or not torch.is_grad_enabled():
            with torch.no_grad():
                # the same numbers as the masked form below, in place over one vocabulary-sized buffer instead of
                # four: a filtered token's 0 * -inf = NaN becomes the 0 the mask would have given (a NaN logit
                # stays NaN, as there)
                plogp = logp.exp().mul_(logp).masked_fill_(torch.isneginf(logp), 0.0)
                ent = -plogp.sum(-1)
        else:  # "grad", under autograd
            # entropy of the (filtered) sampling distribution; filtered tokens (p = 0, log p = -inf) add nothing,
            # and are masked before the product: 0 * -inf would make every gradient NaN
            finite = torch.isfinite(logp)
            plogp = logp.exp() * logp.masked_fill(~finite, 0.0)
            ent = -plogp.sum(-1)
        hidden = out.hidden_states[-1][:, -steps - 1 : -1] if with_hidden else None
        return Evaluation(torch.where(keep, token_logp, zero), torch.where(keep, ent, zero), hidden)

    def log_probs(
        self,
        prompt_ids: torch.Tensor | Rollout,
        prompt_mask: torch.Tensor | SamplingConfig | None = None,
        completion_ids: torch.Tensor | None = None,
        completion_mask: torch.Tensor | None = None,
        config: SamplingConfig | None = None,
    ) -> torch.Tensor:
        """Per-token log-probs (B, T) of given completions under the sampling distribution of `config`.

        Takes the four tensors of a batch (`encode_pairs` makes them from text), or a `Rollout`
        in their place: `policy.log_probs(rollout, config)` scores the rollout's own
        completions. One forward pass over prompt + completion; differentiable when grad is
        enabled, 0 where `completion_mask` is 0. With the config used to sample (None = the
        model's own distribution, `SamplingConfig()`), this agrees with `Rollout.logprobs` to
        float precision.
        """
        if isinstance(prompt_ids, Rollout):
            if completion_ids is not None or completion_mask is not None or not (
                prompt_mask is None or isinstance(prompt_mask, SamplingConfig)
            ):
                raise TypeError("log_probs takes a Rollout or the four tensors (prompt_ids, prompt_mask, "
                                "completion_ids, completion_mask), not both")
            if isinstance(prompt_mask, SamplingConfig):
                if config is not None:
                    raise TypeError("log_probs got two sampling configs; pass it once: log_probs(rollout, config)")
                config = prompt_mask
            rollout = prompt_ids
            prompt_ids, prompt_mask = rollout.prompt_ids, rollout.prompt_mask
            completion_ids, completion_mask = rollout.completion_ids, rollout.completion_mask
        elif not isinstance(prompt_mask, torch.Tensor) or completion_ids is None or completion_mask is None:
            raise TypeError("log_probs takes a Rollout, or the four tensors (prompt_ids, prompt_mask, completion_ids, "
                            "completion_mask) that Policy.encode_pairs returns")
        config = config if config is not None else SamplingConfig()
        return self.evaluate(prompt_ids, prompt_mask, completion_ids, completion_mask, config, entropy="none").logprobs


def _load_with_adapter(folder: Path, is_trainable: bool, model_kwargs: dict[str, object]) -> tuple[Any, str | Path]:
    """(base + adapter, where the tokenizer is) for an adapter folder: the base its config names, then the adapter."""
    peft = require_peft()
    config = peft.PeftConfig.from_pretrained(folder)
    base_name = config.base_model_name_or_path
    if not base_name:
        raise ValueError(f"the adapter in {folder} does not name its base model (base_model_name_or_path is empty in "
                         "adapter_config.json); set it there to the base model's Hub name or folder")
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(base_name, **model_kwargs), folder, is_trainable)
    # the tokenizer saved beside the adapter, else the base's
    return model, folder if (folder / "tokenizer_config.json").is_file() else base_name


def attach_adapter(base: PreTrainedModel, folder: str | PathLike[str], is_trainable: bool = True) -> Any:
    """`base` with the adapter saved in `folder` put on it (`peft.PeftModel.from_pretrained`; `base` is changed in
    place), trainable unless `is_trainable=False`, in the mode `base` was in (peft leaves a trainable one in train
    mode; a loaded model is in eval mode)."""
    was_training = base.training
    model = require_peft().PeftModel.from_pretrained(base, folder, is_trainable=is_trainable)
    return model.train(was_training)


def as_generator(seed: int | torch.Generator | None, device: torch.device | str,
                 name: str = "seed") -> torch.Generator | None:
    """A `torch.Generator` on `device` seeded with `seed` (a generator or None passes through).

    `name` is the argument's name, for errors.
    """
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, a torch.Generator or None, got {type(seed).__name__}")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
