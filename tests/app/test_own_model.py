"""An experiment file over the user's own chat model and data: LoRA, chat templates, Parquet and TRL layouts, field names.

The model is a random-init Llama saved beside the experiment file with a chat template that writes
its own BOS; the prompts are chat messages in a Parquet column named "question", the demonstrations
TRL's conversational prompt/completion records under other field names, the labels TRL's
conversational preferences. Every file is found beside the TOML file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chat_fixtures import llama_chat_tokenizer
from llm_gym.app.cli import main
from llm_gym.feedback.store import PreferenceStore

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft 0.21

QUESTIONS = ["name a colour", "say something kind", "describe the sea", "pick a number", "greet me", "tell a joke"]

EXPERIMENT = """
stages = ["sft", "reward_model", "ppo", "evaluation"]
seed = 0

[model]
name_or_path = "./chat-llama"
lora = {r = 4, lora_alpha = 8, target_modules = ["q_proj", "v_proj"]}

[task]
env = "llm_gym/PromptBandit-v0"
env_kwargs = {dataset = ["hello"], reward_fn = "doubles:word_count_reward"}
prompts = "data/prompts.parquet"
demonstrations = "data/demos.jsonl"
prompt_field = "question"
completion_field = "answer"

[oracle]
kind = "recorded"
path = "data/preferences.jsonl"

[sft]
epochs = 1

[reward_model.trainer]
epochs = 1
heldout_fraction = 0.0

[ppo.lora]
iterations = 2
num_envs = 4
checkpoint_every = 1
reward = "reward_model"
config = {minibatch_size = 4, sampling = {max_new_tokens = 6}}

[evaluation]
prompts = 4
sampling = {max_new_tokens = 6}
"""


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """The experiment folder: exp.toml, the model and the data files."""
    folder = tmp_path / "exp"
    (folder / "data").mkdir(parents=True)
    tokenizer = llama_chat_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder / "chat-llama")
    tokenizer.save_pretrained(folder / "chat-llama")
    pq.write_table(pa.table({"question": [user(q) for q in QUESTIONS], "id": list(range(len(QUESTIONS)))}),
                   folder / "data" / "prompts.parquet")
    with open(folder / "data" / "demos.jsonl", "w") as f:
        for q in QUESTIONS:
            f.write(json.dumps({"question": user(q), "answer": assistant("gladly, here it is.")}) + "\n")
    with open(folder / "data" / "preferences.jsonl", "w") as f:
        for q in QUESTIONS:
            f.write(json.dumps({"prompt": user(q), "chosen": assistant("gladly, here it is."),
                                "rejected": assistant("no.")}) + "\n")
    (folder / "exp.toml").write_text(EXPERIMENT)
    return folder


def test_a_lora_chat_experiment_runs_on_parquet_and_trl_layouts(experiment: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    state = json.loads((out / "state.json").read_text())
    assert set(state) >= {"pretrain", "sft", "reward_model", "ppo.lora", "evaluation"}
    # the SFT policy is handed on merged (a plain model); the PPO run trained an adapter, its checkpoint holds it alone
    assert (out / "sft" / "model.safetensors").is_file() and not (out / "sft" / "adapter_config.json").exists()
    assert (out / "ppo" / "lora" / "checkpoint" / "policy" / "adapter_config.json").is_file()
    assert not (out / "ppo" / "lora" / "checkpoint" / "policy" / "model.safetensors").exists()
    assert json.loads((out / "reward_model" / "reward_model.json").read_text())["peft_config"]["r"] == 4
    # the recorded preferences were rendered with the model's chat template: one BOS, the assistant turn opened
    with PreferenceStore(out / "labels.sqlite") as store:
        comparisons = store.comparisons()
    assert len(comparisons) == len(QUESTIONS)
    assert {c.prompt for c in comparisons} == {f"<s><|user|>\n{q}</s>\n<|assistant|>\n" for q in QUESTIONS}
    assert {c.completions[c.ranks.index(0)] for c in comparisons} == {"gladly, here it is.</s>"}
    assert set(json.loads((out / "summary.json").read_text())["rows"]) == {"pretrained", "sft", "reward_model", "lora"}


def test_lora_settings_are_checked_before_anything_runs_and_are_part_of_the_fingerprint(experiment: Path, tmp_path: Path,
                                                                                       capsys) -> None:
    out = tmp_path / "run"
    bad = ["--set", "model.lora={r = 4, alpha = 8}"]
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress", *bad]) == 2
    err = capsys.readouterr().err
    assert "model.lora" in err and "alpha" in err and "lora_alpha" in err
    assert not (out / "state.json").exists()
    gpt2_names = ["--set", "model.lora={r = 4, target_modules = ['c_attn']}"]  # a GPT-2 layer; this model is a Llama
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress", *gpt2_names]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.lora: ") and "c_attn" in err and "'q_proj'" in err and "Traceback" not in err
    assert not (out / "state.json").exists()
    sft_only = ["--set", "stages=['sft']"]
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress", *sft_only]) == 0
    first = json.loads((out / "state.json").read_text())["sft"]["fingerprint"]
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress", *sft_only,
                 "--set", "model.lora={r = 2, lora_alpha = 8, target_modules = ['q_proj']}"]) == 0
    assert json.loads((out / "state.json").read_text())["sft"]["fingerprint"] != first


def test_a_data_file_is_fingerprinted_by_its_content_and_the_fields_read_from_it(tmp_path: Path) -> None:
    from llm_gym.app.stages import _file_fingerprint

    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"question": "q", "answer": "a", "prompt": "p", "completion": "c"}) + "\n")
    default = _file_fingerprint(str(demos), ("prompt_field", "prompt", "prompt"), ("completion_field", "completion", "completion"))
    assert default == _file_fingerprint(str(demos))  # the defaults add nothing: older runs keep their fingerprints
    as_prompt = _file_fingerprint(str(demos), ("prompt_field", "question", "prompt"), ("completion_field", "completion", "completion"))
    as_completion = _file_fingerprint(str(demos), ("prompt_field", "prompt", "prompt"), ("completion_field", "question", "completion"))
    assert len({default, as_prompt, as_completion}) == 3


def test_data_errors_in_an_experiment_file_give_its_keys_as_the_fix(experiment: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    wrong_field = ["--set", "task.prompt_field='prompt'"]  # the files hold "question"
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress", *wrong_field]) == 2
    err = capsys.readouterr().err
    assert "prompts.parquet row 0: no 'prompt' column; found ['question', 'id']" in err, err
    assert 'set task.prompt_field = "question"' in err and "pass " not in err, err
    # the built-in model has no chat template to render messages with (refused before it is built)
    builtin_model = ["--set", "model.name_or_path=''", "--set", "model.lora={}",
                     "--set", "stages=['pretrain', 'sft']"]
    assert main(["run", str(experiment / "exp.toml"), "--out", str(out), "--no-progress", *builtin_model]) == 2
    err = capsys.readouterr().err
    assert "holds chat messages" in err and "set model.name_or_path to a model whose tokenizer has a chat template" in err
    assert not (out / "state.json").exists()


def test_an_environments_own_chat_dataset_is_found_beside_the_file_and_rendered(experiment: Path, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """`task.env_kwargs.dataset` is a file beside the experiment file, read with `task.prompt_field` and the model's
    chat template, as the task's own files are."""
    from llm_gym.app.config import load_experiment
    from llm_gym.app.pipeline import Pipeline

    text = EXPERIMENT.replace('env_kwargs = {dataset = ["hello"], reward_fn = "doubles:word_count_reward"}',
                              'env_kwargs = {dataset = "data/prompts.parquet", reward_fn = "doubles:word_count_reward"}')
    text = text.replace('prompts = "data/prompts.parquet"\n', "")
    (experiment / "env.toml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_experiment("../exp/env.toml")
    assert config.task.env_kwargs["dataset"] == str(experiment / "data" / "prompts.parquet")
    assert config.task.env_kwargs["reward_fn"] == "doubles:word_count_reward"  # not a file: as written
    prompts = Pipeline(config, tmp_path / "run").prompts
    assert prompts == [f"<s><|user|>\n{q}</s>\n<|assistant|>\n" for q in QUESTIONS]
