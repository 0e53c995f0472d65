"""Chat messages to text: the validator, prompt and completion rendering, and the errors for bad templates."""

from __future__ import annotations

import subprocess
import sys

import pytest
from chat_fixtures import (GEMMA_LIKE_TEMPLATE, NO_PREFIX_TEMPLATE, USER_HI, chatml_tokenizer, llama3_tokenizer,
                           llama_chat_tokenizer)

from llm_gym.core.chat import ChatError, check_messages, is_messages, render_completion, render_prompt

ANSWER = [{"role": "assistant", "content": "hello there"}]


@pytest.fixture(scope="module")
def tok():
    return llama_chat_tokenizer()


def test_is_messages() -> None:
    assert is_messages(USER_HI)
    assert is_messages(({"role": "system", "content": "be brief"}, {"role": "user", "content": ""}))
    for bad in ("hi", [], [{"role": "user"}], [{"content": "hi"}], [{"role": "user", "content": None}], ["hi"], None):
        assert not is_messages(bad), bad


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], r"row 3: the list of chat messages is empty"),
        ("hi", r"row 3: chat messages must be a list of .* got str"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], r"row 3: message 1 has no 'role' \(found \['content'\]\)"),
        ([{"role": "user"}], r"row 3: message 0 has no 'content'"),
        ([{"role": "user", "content": ["a", "b"]}], r"row 3: message 0: 'content' must be a string, got list"),
        ([{"role": "user", "content": "a"}, "b"], r"row 3: message 1 is str, not a"),
    ],
)
def test_check_messages_names_where_and_what(bad: object, match: str) -> None:
    with pytest.raises(ChatError, match=match):
        check_messages(bad, "row 3")


def test_render_prompt_keeps_the_templates_bos_and_opens_the_assistant_turn(tok) -> None:
    assert render_prompt(tok, USER_HI) == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_render_completion_is_what_the_answer_adds_after_the_prompt(tok) -> None:
    completion = render_completion(tok, USER_HI, ANSWER)
    assert completion == "hello there</s>"  # the template's "\n" after the EOS is dropped
    whole = tok.apply_chat_template(USER_HI + ANSWER, tokenize=False)
    assert render_prompt(tok, USER_HI) + completion + "\n" == whole


def test_a_template_that_does_not_render_the_prompt_as_a_prefix_is_refused() -> None:
    tok = llama_chat_tokenizer(NO_PREFIX_TEMPLATE)
    with pytest.raises(ChatError, match=r"does not render the prompt as the start of prompt \+ completion.*'hi<\|assistant\|>'"):
        render_completion(tok, USER_HI, ANSWER)


def test_no_chat_template_says_how_to_set_one() -> None:
    tok = llama_chat_tokenizer(template=None)
    with pytest.raises(ChatError, match=r"tokenizer.chat_template is None.*tokenizer.chat_template = "):
        render_prompt(tok, USER_HI)
    with pytest.raises(ChatError, match=r"no apply_chat_template: pass the policy's tokenizer"):
        render_prompt(object(), USER_HI)  # type: ignore[arg-type]


def test_any_object_with_apply_chat_template_works() -> None:
    """The tokenizer is duck-typed: core needs no transformers."""

    class Joiner:
        chat_template = "plain"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant:" if add_generation_prompt else "")

    assert render_prompt(Joiner(), USER_HI) == "user: hi\nassistant:"
    assert render_completion(Joiner(), USER_HI, ANSWER) == " hello there\n"


def test_core_imports_no_torch_or_transformers() -> None:
    code = ("import sys, llm_gym.core.chat, llm_gym.core.data; "
            "bad = [m for m in ('torch', 'transformers', 'datasets', 'pandas', 'pyarrow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_completion_ends_just_after_the_eos_the_template_writes() -> None:
    """Zephyr writes "</s>\\n", ChatML "<|im_end|>\\n", Llama-3 "<|eot_id|>": cut after the last EOS string."""
    assert render_completion(llama_chat_tokenizer(), USER_HI, ANSWER) == "hello there</s>"
    assert render_completion(llama3_tokenizer(), USER_HI, ANSWER) == "hello there<|eot_id|>"
    assert render_completion(chatml_tokenizer(), USER_HI, ANSWER) == "hello there<|im_end|>"
    # the turn ends with something that is not the EOS: kept as rendered, the encoders append the EOS
    assert render_completion(chatml_tokenizer("<|endoftext|>"), USER_HI, ANSWER) == "hello there<|im_end|>\n"
    # an EOS string inside the answer, followed by more text, is not the end
    two = [{"role": "assistant", "content": "a</s>b"}]
    assert render_completion(llama_chat_tokenizer(), USER_HI, two) == "a</s>b</s>"


def test_a_template_that_raises_gives_a_chat_error_with_its_message() -> None:
    tok = llama_chat_tokenizer(GEMMA_LIKE_TEMPLATE)
    system = [{"role": "system", "content": "be brief"}, *USER_HI]
    with pytest.raises(ChatError, match=r"chat template refused these messages \(roles \['system', 'user'\]\): "
                                        r"System role not supported; .*fold a system message"):
        render_prompt(tok, system)
    with pytest.raises(ChatError, match="System role not supported"):
        render_completion(tok, system, ANSWER)
    assert render_prompt(tok, USER_HI).endswith("<start_of_turn>model\n")


def test_a_prompt_ending_with_an_assistant_message_is_a_prefill(tok) -> None:
    prefill = [*USER_HI, {"role": "assistant", "content": "Sure"}]
    assert render_prompt(tok, prefill) == "<s><|user|>\nhi</s>\n<|assistant|>\nSure"  # no new turn opened
    assert render_completion(tok, prefill, [{"role": "assistant", "content": ", here it is"}]) == ", here it is</s>"


def test_completion_messages_must_be_the_assistants(tok) -> None:
    with pytest.raises(ChatError, match=r"completion messages: message 0 has role 'user'; .*role 'assistant'"):
        render_completion(tok, USER_HI, [{"role": "user", "content": "more"}])
