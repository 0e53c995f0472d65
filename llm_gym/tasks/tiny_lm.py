"""The built-in tiny language model: a BPE tokenizer and a GPT-2-style model pretrained on a task's corpus.

No weights can be downloaded on the machines llm_gym is built for, so the default demo,
the tests and the benchmarks use a model built here: a byte-level BPE tokenizer trained
(with the `tokenizers` library that transformers uses) on a task's pretraining text, by
default the synthetic review corpus of `llm_gym.tasks.review` (any `Task` with
`pretrain_texts` will do: the chain sums of `llm_gym.tasks.arithmetic`, say), and a small
GPT-2 pretrained on that corpus with the ordinary next-token loss. The result is saved with `save_pretrained` in a cache folder and is loaded only
through `from_pretrained`, the same path a Hub model takes, so nothing downstream knows
it is local.

The cache folder is `$LLM_GYM_CACHE`, else `~/.cache/llm_gym`; a folder per hash of the config and the corpus,
written to a temporary folder and renamed into place (`llm_gym.infra.atomic`), so an
interrupted build never leaves a half-written model behind; what a killed build leaves (a
temporary folder, or a rebuild cut short between its renames) is repaired by the next lookup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from llm_gym.core.task import Task
from llm_gym.infra.atomic import atomic_dir, recover_dir
from llm_gym.infra.configio import check_finite
from llm_gym.infra.logger import Logger
from llm_gym.models.lm import encode_documents, perplexity
from llm_gym.models.policy import default_device
from llm_gym.tasks.review import ReviewTask, ReviewTaskConfig, generate_review_task

__all__ = [
    "TinyLMConfig",
    "PretrainReport",
    "build_builtin_model",
    "corpus_fingerprint",
    "find_builtin_model",
    "default_cache_dir",
    "task_fingerprint",
    "train_tokenizer",
]

_log = logging.getLogger(__name__)
_FORMAT_VERSION = 1  # bump when the build procedure changes, so old caches are not reused
_REPORT_FILE = "llm_gym_pretrain.json"
EOT = "<|endoftext|>"
PAD = "<pad>"


def default_cache_dir() -> Path:
    """`$LLM_GYM_CACHE` if set, else `~/.cache/llm_gym`."""
    return Path(os.environ.get("LLM_GYM_CACHE") or Path.home() / ".cache" / "llm_gym")


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture and pretraining budget of the built-in model (the defaults take about a minute on 2 cores)."""

    task: ReviewTaskConfig = field(default_factory=ReviewTaskConfig)
    """The built-in review task, whose corpus the tokenizer and the model are trained on unless another task is given
    to `build_builtin_model`."""
    vocab_size: int = 1024
    """BPE vocabulary size, special tokens included."""
    n_layer: int = 3
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block (must divide n_embd)."""
    n_embd: int = 128
    """Hidden size."""
    n_positions: int = 128
    """Context length in tokens (prompt + completion)."""
    train_steps: int = 800
    """Optimizer steps of pretraining."""
    batch_size: int = 32
    """Sequences per step."""
    seq_len: int = 64
    """Tokens per training sequence (windows cut from the packed corpus); at most n_positions."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over 5% of the steps, then cosine decay to 10%)."""
    seed: int = 0
    """Seed of model initialisation and batch order."""

    def __post_init__(self) -> None:
        check_finite(self)
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "n_positions", "train_steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyLMConfig.{name} must be a positive int, got {value!r}")
        if self.vocab_size < 300:
            raise ValueError(f"TinyLMConfig.vocab_size must be >= 300 (256 bytes + merges + specials), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"TinyLMConfig.n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        if self.seq_len > self.n_positions:
            raise ValueError(f"TinyLMConfig.seq_len ({self.seq_len}) must be <= n_positions ({self.n_positions})")
        if not self.learning_rate > 0:
            raise ValueError(f"TinyLMConfig.learning_rate must be > 0, got {self.learning_rate!r}")

    @classmethod
    def smoke(cls) -> TinyLMConfig:
        """A model small enough to build in seconds: for tests and smoke runs, not for results."""
        task = ReviewTaskConfig(n_pretrain=1500, n_heldout=200, n_prompts=100, n_eval_prompts=40, n_demonstrations=100)
        return cls(task=task, vocab_size=512, n_layer=1, n_head=2, n_embd=32, train_steps=80, batch_size=16, seq_len=48)

    def cache_key(self, corpus: str | None = None) -> str:
        """A short hash of everything that determines the built model.

        It covers the config *and* the text it is trained on (`corpus`, a `corpus_fingerprint`; by
        default the review task's for `self.task`), so a change to a task generator (a new template,
        a fixed word list) builds a new model instead of silently reusing one pretrained on the old corpus.
        """
        if corpus is None:
            fields = {"corpus": task_fingerprint(self.task), **dataclasses.asdict(self)}
        else:  # another task's corpus: the review task's config plays no part
            fields = {"corpus": corpus, **{k: v for k, v in dataclasses.asdict(self).items() if k != "task"}}
        blob = json.dumps({"v": _FORMAT_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def corpus_fingerprint(task: Task) -> str:
    """sha256 of the text a model is built from: `task`'s pretraining and held-out text."""
    h = hashlib.sha256()
    for part in (task.pretrain_texts, task.heldout_texts):
        h.update("\x1e".join(part).encode() + b"\x1d")
    return h.hexdigest()


@lru_cache(maxsize=8)
def task_fingerprint(config: ReviewTaskConfig) -> str:
    """sha256 of every text the review task generator produces for `config` (what the model is trained on)."""
    task = generate_review_task(config)
    h = hashlib.sha256()
    for part in (task.pretrain_texts, task.heldout_texts, task.prompts, task.eval_prompts):
        h.update("\x1e".join(part).encode())
    h.update("\x1e".join(d.prompt + "\x1f" + d.completion for d in task.demonstrations).encode())
    return h.hexdigest()


def _cache_path(root: Path, config: TinyLMConfig, task: Task | None) -> Path:
    """The cache folder of the model `config` builds on `task`'s corpus (None or a `ReviewTask`: the review corpus)."""
    if task is None or isinstance(task, ReviewTask):
        review = config if task is None else dataclasses.replace(config, task=task.config)
        return root / f"review-gpt2-{review.cache_key()}"
    return root / f"tiny-gpt2-{config.cache_key(corpus_fingerprint(task))}"


class PretrainReport(NamedTuple):
    """Where the built model lives and how pretraining went."""

    path: Path
    """Folder loadable with `from_pretrained` (model and tokenizer)."""
    perplexity_before: float
    """Held-out perplexity of the untrained model."""
    perplexity_after: float
    """Held-out perplexity after pretraining."""
    seconds: float
    """Wall time of the build (of the original build when cached)."""
    cached: bool
    """True when the model was found in the cache and not rebuilt."""


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on `texts`.

    `<|endoftext|>` is BOS and EOS (as in GPT-2) and is prepended to every encoded text;
    `<pad>` is a separate padding token. Byte-level, so any Unicode text round-trips.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    eot_id = tok.token_to_id(EOT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A $B", special_tokens=[(EOT, eot_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=PAD, padding_side="left"
    )


def _pretrain(model: GPT2LMHeadModel, stream: np.ndarray, config: TinyLMConfig, logger: Logger | None) -> None:
    """Next-token pretraining on random windows of the packed token stream."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, config.train_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, config.train_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    stream_t = torch.from_numpy(stream)
    model.train()
    for step in range(config.train_steps):
        starts = rng.integers(0, len(stream) - config.seq_len, size=config.batch_size)
        batch = torch.stack([stream_t[s : s + config.seq_len] for s in starts]).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if logger is not None and (step % 50 == 0 or step == config.train_steps - 1):
            logger.record("train/pretrain_loss", loss.item())
            logger.record("train/pretrain_lr", sched.get_last_lr()[0])
            logger.dump(step)
    model.eval()


class _BuiltMeanwhile(Exception):
    """Raised inside a cache write to abandon it: another process has saved the same model meanwhile."""


def find_builtin_model(config: TinyLMConfig | None = None, cache_dir: str | PathLike[str] | None = None,
                       task: Task | None = None) -> PretrainReport | None:
    """The cached built-in model for `config` (pretrained on `task`'s corpus; None = the review task's), or None if
    it has not been built yet."""
    config = config or TinyLMConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = recover_dir(_cache_path(root, config, task))
    report_file = path / _REPORT_FILE
    if not report_file.exists():
        return None
    info = json.loads(report_file.read_text())
    return PretrainReport(path, info["perplexity_before"], info["perplexity_after"], info["seconds"], cached=True)


def build_builtin_model(
    config: TinyLMConfig | None = None,
    cache_dir: str | PathLike[str] | None = None,
    logger: Logger | None = None,
    rebuild: bool = False,
    task: Task | None = None,
) -> PretrainReport:
    """Return the built-in pretrained model, building and caching it on first use.

    Args:
        config: architecture and budget; `TinyLMConfig()` by default.
        cache_dir: where built models live; `default_cache_dir()` by default.
        logger: receives `train/pretrain_loss` during a build.
        rebuild: build again even if a cached model exists.
        task: the task whose `pretrain_texts` are the corpus (its `heldout_texts` measure perplexity; without any,
            the last 5% of the corpus is held out); None = the review task generated from `config.task`.

    Returns:
        A `PretrainReport`; load the model with `Policy.from_pretrained(report.path)`.
    """
    config = config or TinyLMConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(root, config, task)
    found = find_builtin_model(config, cache_dir, task)
    if found is not None and not rebuild:
        return found

    t0 = time.perf_counter()
    task = task if task is not None else generate_review_task(config.task)
    if isinstance(task, ReviewTask):  # the config records the review corpus it was built on
        config = dataclasses.replace(config, task=task.config)
    corpus, heldout = list(task.pretrain_texts), list(task.heldout_texts)
    if not corpus:
        raise ValueError(f"the task ({type(task).__name__}) has no pretraining text to build the built-in model on; "
                         "give the experiment a model (model.name_or_path) or the task pretrain_texts")
    if not heldout:  # perplexity needs text the model never trained on
        cut = max(1, len(corpus) // 20) if len(corpus) > 1 else 0
        corpus, heldout = (corpus[:-cut], corpus[-cut:]) if cut else (corpus, corpus)
    torch.manual_seed(config.seed)
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(model_config).to(default_device())
    ppl_before = perplexity(model, tokenizer, heldout)
    stream = np.fromiter((t for d in encode_documents(tokenizer, corpus) for t in d[1:]), dtype=np.int64)
    stream = np.concatenate([[tokenizer.bos_token_id], stream])
    if len(stream) <= config.seq_len:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than seq_len={config.seq_len}: too little text "
                         "to pretrain a model on; give the task more pretrain_texts, lower pretrain.seq_len, or start "
                         "from a model of your own (model.name_or_path)")
    _pretrain(model, stream, config, logger)
    ppl_after = perplexity(model, tokenizer, heldout)
    seconds = time.perf_counter() - t0

    try:
        with atomic_dir(path) as tmp:  # holds the folder's lock: no other build can finish meanwhile
            if (path / _REPORT_FILE).exists() and not rebuild:
                raise _BuiltMeanwhile
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            info = {
                "config": dataclasses.asdict(config),
                "corpus": "review" if isinstance(task, ReviewTask) else corpus_fingerprint(task),
                "perplexity_before": ppl_before,
                "perplexity_after": ppl_after,
                "seconds": seconds,
                "corpus_tokens": int(len(stream)),
            }
            (tmp / _REPORT_FILE).write_text(json.dumps(info, indent=2))
    except _BuiltMeanwhile:
        # another process built the same config first: keep its copy, which a reader may be loading now
        _log.info("%s was built by another process meanwhile; keeping that copy", path)
        return find_builtin_model(config, cache_dir, task) or PretrainReport(path, ppl_before, ppl_after, seconds, cached=True)
    _log.info("built %s: perplexity %.1f -> %.2f in %.0fs", path, ppl_before, ppl_after, seconds)
    return PretrainReport(path, ppl_before, ppl_after, seconds, cached=False)
