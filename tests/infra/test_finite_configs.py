"""Every float field of every config dataclass refuses NaN and infinity (`configio.check_finite`).

The config classes are found by walking the whole package, so a config added later, or a
float field added to one, is checked without editing this file.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import types
import typing

import pytest

from llm_gym.app.config import ExperimentConfig
from llm_gym.infra.configio import ConfigError, apply_overrides, check_finite, from_dict, to_dict

CONFIG_SUFFIXES = ("Config", "Spec", "Stage")
"""A dataclass whose name ends so is a config (`PPOConfig`, `OracleSpec`, `PPOStage`); results such as
`PolicyReport` and records such as `Comparison` are not."""

EXPECTED = {"PPOConfig", "SFTConfig", "RewardTrainerConfig", "SamplingConfig", "TinyLMConfig", "ReviewTaskConfig",
            "PreferenceLoopConfig", "MLPRewardLearnerConfig", "ModelSpec", "TaskSpec", "OracleSpec", "RewardModelStage",
            "PPOStage", "LoopStage", "EvaluationSpec", "ExperimentConfig"}

INF_MEANS_SOMETHING = {("PPOConfig", "kl_explosion"), ("OnPolicyConfig", "kl_explosion")}
"""Fields where inf is a setting (`kl_explosion = inf`: never warn), in their class or its subclasses; NaN is
refused there too."""


def _config_classes() -> list[type]:
    import llm_gym
    import llm_gym.agents
    import llm_gym.envs

    found: dict[str, type] = {}
    for package in (llm_gym, llm_gym.agents, llm_gym.envs):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):  # running it is the command line
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                        and name.endswith(CONFIG_SUFFIXES) and not name.startswith("_")):
                    found[f"{module.__name__}.{name}"] = obj
    return [found[key] for key in sorted(found)]


def _is_float(tp: object) -> bool:
    if tp is float:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return float in typing.get_args(tp)
    return False


CONFIGS = _config_classes()
FLOAT_FIELDS = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls)
                if _is_float(typing.get_type_hints(cls).get(f.name))]


def test_the_walk_finds_every_config() -> None:
    names = {cls.__name__ for cls in CONFIGS}
    assert EXPECTED <= names, f"not found: {EXPECTED - names}"
    assert len(FLOAT_FIELDS) >= 30, "the float fields of the configs were not found"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("cls", "name"), FLOAT_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FLOAT_FIELDS])
def test_every_float_field_refuses_nan_and_inf(cls: type, name: str, bad: float) -> None:
    opted_out = any((klass.__name__, name) in INF_MEANS_SOMETHING for klass in cls.__mro__)
    if opted_out and bad == math.inf:
        dataclasses.replace(cls(), **{name: bad})  # a setting here
        return
    if opted_out and bad == -math.inf:
        with pytest.raises(ValueError):  # refused by the field's own range check
            dataclasses.replace(cls(), **{name: bad})
        return
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name} must be a (finite number|number or inf), got"):
        dataclasses.replace(cls(), **{name: bad})


@pytest.mark.parametrize("override", ["ppo.ppo.config.kl_coef=nan", "ppo.ppo.config.ent_coef=nan",
                                      "ppo.ppo.config.learning_rate=inf", "sft.learning_rate=inf",
                                      "ppo.ppo_ptx.config.score_scale=inf", "oracle.tie_margin=inf",
                                      "evaluation.sampling.temperature=inf"])
def test_a_config_file_with_nan_or_inf_is_refused_with_its_key_path(override: str) -> None:
    """TOML and --set spell nan and inf; the error names the table and the field, before anything runs."""
    key, value = override.split("=")
    table, field = key.rsplit(".", 1)
    with pytest.raises(ConfigError, match=rf"{table}: \w+\.{field} must be a finite number, got {value}"):
        from_dict(ExperimentConfig, apply_overrides(to_dict(ExperimentConfig()), [override]))


def test_check_finite_covers_lists_and_names_its_opt_outs() -> None:
    @dataclasses.dataclass(frozen=True)
    class Schedule:
        rates: tuple[float, ...] = (1.0, 0.5)
        patience: float = 3.0

    check_finite(Schedule())
    with pytest.raises(ValueError, match=r"Schedule\.rates must be a finite number, got \(1\.0, nan\) \(the default is \(1\.0, 0\.5\)\)"):
        check_finite(Schedule(rates=(1.0, math.nan)))
    check_finite(Schedule(patience=math.inf), allow_inf=("patience",))
    with pytest.raises(ValueError, match=r"Schedule\.patience must be a number or inf, got nan"):
        check_finite(Schedule(patience=math.nan), allow_inf=("patience",))
    with pytest.raises(TypeError, match="has no field"):
        check_finite(Schedule(), allow_inf=("patiense",))
    with pytest.raises(TypeError, match="dataclass instance"):
        check_finite(Schedule)
