"""Tests of llm_gym.infra.configio: strict dict <-> config dataclass mapping, overrides, files, field docs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from llm_gym.agents import PPOConfig, SFTConfig
from llm_gym.infra.configio import ConfigError, apply_overrides, field_docs, from_dict, load_config, parse_override, to_dict
from llm_gym.models.policy import SamplingConfig
from llm_gym.models.reward_trainer import RewardTrainerConfig
from llm_gym.tasks.review import ReviewTaskConfig
from llm_gym.tasks.tiny_lm import TinyLMConfig

Mode = Literal["skip", "half"]


@dataclass(frozen=True)
class Inner:
    """A nested table with its own validation."""

    ptx_coef: float = 0.0
    """Weight of the pretraining term."""
    kl_coef: float = 0.05
    """KL weight; must be >= 0."""
    steps: int = 1
    """A count."""

    def __post_init__(self) -> None:
        if self.kl_coef < 0:
            raise ValueError(f"Inner.kl_coef must be >= 0, got {self.kl_coef}")


@dataclass(frozen=True)
class Stage:
    """A dataclass inside a dataclass inside a dict."""

    config: Inner = field(default_factory=Inner)
    """The inner settings."""


@dataclass(frozen=True)
class Member:
    """One entry of a dict of dataclasses."""

    k: int = 1
    """How many."""
    labels: list[str] = field(default_factory=list)
    """Names."""


@dataclass(frozen=True)
class Outer:
    """Every type the mapping supports."""

    seed: int = 0
    """Seed."""
    rate: float = 1.0
    """A float field."""
    enabled: bool = True
    """A bool field."""
    name: str = "run"
    """A str field."""
    clip: float | None = 0.2
    """Optional float."""
    ties: Mode = "skip"
    """Literal through an alias."""
    ppo_ptx: Stage = field(default_factory=Stage)
    """Nested dataclass."""
    members: dict[str, Member] = field(default_factory=dict)
    """Dict of dataclasses."""
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    """List of ints."""
    tags: tuple[str, ...] = ("a",)
    """Tuple of strings."""


@dataclass(frozen=True)
class Root:
    """A top level whose child has a path prefix."""

    ppo: Outer = field(default_factory=Outer)
    """The nested config."""


@dataclass(frozen=True)
class Required:
    """A field without a default."""

    name: str
    """Must be given."""


@dataclass(frozen=True)
class Undocumented:
    """Mixed documentation: a literal, an Attributes entry, nothing.

    Attributes:
        b: From the class docstring.
    """

    a: int = 0
    """From the literal."""
    b: int = 0
    c: int = 0


# --------------------------------------------------------------------------- from_dict


def test_from_dict_builds_every_supported_type() -> None:
    data = {
        "seed": 3,
        "rate": 2,
        "enabled": False,
        "name": "x",
        "clip": None,
        "ties": "half",
        "ppo_ptx": {"config": {"ptx_coef": 0.5}},
        "members": {"a": {"k": 2, "labels": ["p", "q"]}, "b": {}},
        "sizes": [4],
        "tags": ["u", "v"],
    }
    got = from_dict(Outer, data)
    assert got == Outer(
        seed=3,
        rate=2.0,
        enabled=False,
        name="x",
        clip=None,
        ties="half",
        ppo_ptx=Stage(Inner(ptx_coef=0.5)),
        members={"a": Member(k=2, labels=["p", "q"]), "b": Member()},
        sizes=[4],
        tags=("u", "v"),
    )
    assert type(got.rate) is float and type(got.tags) is tuple and type(got.sizes) is list
    assert from_dict(Outer, {}) == Outer()


@pytest.mark.parametrize("text", ["none", "None"])
def test_optional_accepts_none_strings(text: str) -> None:
    assert from_dict(Outer, {"clip": text}).clip is None
    assert from_dict(Outer, {"clip": 1}).clip == 1.0


def test_unknown_key_names_path_known_keys_and_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Root, {"ppo": {"members": {"a": {"lables": ["x"]}}}})
    msg = str(info.value)
    assert msg.startswith("ppo.members.a.lables: unknown key; known keys of Member: k, labels")
    assert "(did you mean 'labels'?)" in msg


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"^zzzz: unknown key; known keys of Member: k, labels$"):
        from_dict(Member, {"zzzz": 1})


def test_wrong_type_names_dotted_path() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Root, {"ppo": {"ppo_ptx": {"config": {"ptx_coef": "abc"}}}})
    assert str(info.value) == "ppo.ppo_ptx.config.ptx_coef: expected a number, got 'abc' (str)"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"seed": True}, "seed: expected an integer, got True (bool)"),
        ({"seed": 1.5}, "seed: expected an integer (a whole number, without a decimal point), got 1.5 (float)"),
        ({"rate": False}, "rate: expected a number, got False (bool)"),
        ({"enabled": 1}, "enabled: expected true or false, got 1 (int)"),
        ({"name": 3}, "name: expected a string"),
        ({"clip": "big"}, "clip: expected a number or none, got 'big' (str)"),
        ({"ppo_ptx": 3}, "ppo_ptx: expected a table of Stage settings, got 3 (int)"),
        ({"members": {"a": 1}}, "members.a: expected a table of Member settings"),
        ({"sizes": 3}, "sizes: expected an array"),
        ({"sizes": [1, "2"]}, "sizes[1]: expected an integer, got '2' (str)"),
        ({"tags": ["a", 2]}, "tags[1]: expected a string"),
        ({"members": {"m": {"labels": ["ok", 7]}}}, "members.m.labels[1]: expected a string"),
    ],
)
def test_type_errors(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert str(info.value).startswith(expected)


def test_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Root, {"ppo": {"ties": "halve"}})
    assert str(info.value) == "ppo.ties: expected one of 'skip', 'half', got 'halve' (str)"


def test_post_init_error_is_prefixed_with_table_path() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Root, {"ppo": {"ppo_ptx": {"config": {"kl_coef": -1}}}})
    assert str(info.value) == "ppo.ppo_ptx.config: Inner.kl_coef must be >= 0, got -1.0"
    assert isinstance(info.value.__cause__, ValueError)


def test_post_init_error_at_top_level_uses_class_name() -> None:
    with pytest.raises(ConfigError, match=r"^PPOConfig: PPOConfig\.n_epochs must be a positive int, got 0$"):
        from_dict(PPOConfig, {"n_epochs": 0})


def test_missing_required_key_and_non_table() -> None:
    with pytest.raises(ConfigError, match=r"^name: missing required key of Required"):
        from_dict(Required, {})
    assert from_dict(Required, {"name": "n"}) == Required("n")
    with pytest.raises(ConfigError, match=r"^Outer: expected a table"):
        from_dict(Outer, [1, 2])  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- to_dict / round trip


def test_to_dict_is_plain_json() -> None:
    obj = Outer(clip=None, members={"a": Member(2, ["x"])}, tags=("p", "q"))
    plain = to_dict(obj)
    assert plain["clip"] is None
    assert plain["tags"] == ["p", "q"]
    assert plain["members"] == {"a": {"k": 2, "labels": ["x"]}}
    assert json.loads(json.dumps(plain)) == plain
    assert from_dict(Outer, json.loads(json.dumps(plain))) == obj


@pytest.mark.parametrize(
    "config",
    [
        PPOConfig(),
        PPOConfig(sampling=SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=5), clip_range_vf=None, adaptive_kl=True),
        SFTConfig(epochs=3),
        TinyLMConfig(),
        TinyLMConfig.smoke(),
        RewardTrainerConfig(),
        RewardTrainerConfig(ties="half", max_grad_norm=None, learning_rate=1e-5),
    ],
)
def test_round_trip_real_configs(config: object) -> None:
    plain = to_dict(config)
    assert from_dict(type(config), plain) == config
    assert from_dict(type(config), json.loads(json.dumps(plain))) == config


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ppo.ppo_ptx.config.kl_coef=0.1", (["ppo", "ppo_ptx", "config", "kl_coef"], 0.1)),
        ("lr=1e-3", (["lr"], 1e-3)),
        ("flag=true", (["flag"], True)),
        ("sizes=[1, 2]", (["sizes"], [1, 2])),
        ('name="text with = sign"', (["name"], "text with = sign")),
        ("oracle.kind=synthetic", (["oracle", "kind"], "synthetic")),
        (" a.b = 3 ", (["a", "b"], 3)),
        ("clip=none", (["clip"], "none")),
    ],
)
def test_parse_override(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["ppo.kl_coef", "=0.1", " =1", "ppo..kl_coef=1", ".kl=1", "ppo.=1"])
def test_malformed_override_shows_right_form(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert "--set ppo.kl_coef=0.1" in str(info.value)
    assert repr(text) in str(info.value)


def test_apply_overrides_deep_copies_and_creates_tables() -> None:
    data = {"ppo": {"seed": 1, "members": {"a": {"k": 1}}}}
    out = apply_overrides(data, ["ppo.members.a.k=5", "ppo.ppo_ptx.config.kl_coef=0.1", "ppo.seed=2"])
    assert out == {"ppo": {"seed": 2, "members": {"a": {"k": 5}}, "ppo_ptx": {"config": {"kl_coef": 0.1}}}}
    assert data == {"ppo": {"seed": 1, "members": {"a": {"k": 1}}}}
    assert from_dict(Root, out).ppo.ppo_ptx.config.kl_coef == 0.1


def test_override_to_unknown_key_is_reported_by_from_dict() -> None:
    with pytest.raises(ConfigError, match=r"^ppo\.ppo_ptx\.config\.kl_cof: unknown key.*did you mean 'kl_coef'"):
        from_dict(Root, apply_overrides({}, ["ppo.ppo_ptx.config.kl_cof=0.1"]))


def test_override_through_a_non_table() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"ppo": {"seed": 3}}, ["ppo.seed.x=1"])
    msg = str(info.value)
    assert msg.startswith("ppo.seed: is 3 (int), not a table")
    assert "'ppo.seed.x=1'" in msg


def test_override_none_string_for_optional() -> None:
    assert from_dict(Outer, apply_overrides({}, ["clip=none"])).clip is None


# --------------------------------------------------------------------------- files


def test_load_config_toml_with_overrides(tmp_path: Path) -> None:
    file = tmp_path / "run.toml"
    file.write_text('[ppo]\nseed = 7\nties = "half"\n\n[ppo.members.a]\nk = 2\nlabels = ["x"]\n')
    got = load_config(Root, file, ["ppo.rate=0.5", "ppo.ppo_ptx.config.ptx_coef=1"])
    assert got.ppo == Outer(seed=7, ties="half", rate=0.5, members={"a": Member(2, ["x"])}, ppo_ptx=Stage(Inner(ptx_coef=1.0)))


def test_load_config_json(tmp_path: Path) -> None:
    file = tmp_path / "ppo.json"
    config = PPOConfig(kl_coef=0.2, clip_range_vf=None)
    file.write_text(json.dumps(to_dict(config)))
    assert load_config(PPOConfig, str(file)) == config


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(Root, missing)
    assert "not found" in str(info.value) and str(missing) in str(info.value)


def test_load_config_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.toml"
    file.write_text("[ppo]\nseed = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(Root, file)
    msg = str(info.value)
    assert "broken.toml" in msg and "TOML syntax error" in msg and "line 2" in msg


def test_load_config_contents_error_names_file_and_key(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[ppo]\nseed = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(Root, file)
    assert "bad.toml" in str(info.value) and "ppo.seed: expected an integer, got True (bool)" in str(info.value)


def test_load_config_json_must_be_an_object(tmp_path: Path) -> None:
    file = tmp_path / "list.json"
    file.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="list.json.*must be an object"):
        load_config(Root, file)


# --------------------------------------------------------------------------- field_docs


def test_field_docs_reads_literals_and_attributes_section() -> None:
    assert field_docs(Undocumented) == {"a": "From the literal.", "b": "From the class docstring.", "c": ""}
    assert field_docs(PPOConfig)["kl_coef"] == "Initial beta of the KL penalty to the reference."  # declared in its base
    # a multi-line literal keeps its lines, without the source indentation
    lines = field_docs(RewardTrainerConfig)["learning_rate"].splitlines()
    assert len(lines) > 1 and any(line.startswith("about 1e-5") for line in lines[1:])


def test_field_docs_falls_back_to_attributes_section() -> None:
    docs = field_docs(ReviewTaskConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(ReviewTaskConfig)}
    assert docs["n_prompts"] == "Number of training prompts (review openings) for RL and ranking."
    assert docs["seed"] == "Seed from which every list of the task is derived; the same config always\ngives the same task."


@pytest.mark.parametrize(
    "cls", [PPOConfig, SFTConfig, RewardTrainerConfig, SamplingConfig, TinyLMConfig, ReviewTaskConfig]
)
def test_every_field_of_the_project_configs_is_documented(cls: type) -> None:
    docs = field_docs(cls)
    assert list(docs) == [f.name for f in dataclasses.fields(cls)]
    assert [name for name, doc in docs.items() if not doc.strip()] == []


def test_to_dict_omits_the_fields_it_is_told_to_at_any_depth() -> None:
    config = PPOConfig(sampling=SamplingConfig(max_new_tokens=7))
    drop_sampling_top_k = lambda obj, name: isinstance(obj, SamplingConfig) and name == "top_k"  # noqa: E731
    plain = to_dict({"runs": [config]}, omit=drop_sampling_top_k)
    assert "top_k" not in plain["runs"][0]["sampling"] and plain["runs"][0]["sampling"]["max_new_tokens"] == 7
    full = to_dict({"runs": [config]})
    del full["runs"][0]["sampling"]["top_k"]
    assert plain == full, "nothing else changes"
