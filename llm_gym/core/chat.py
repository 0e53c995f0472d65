"""Chat messages to text: how a conversational record becomes the prompt and completion strings llm_gym trains on.

A conversation is TRL's conversational layout: a list of ``{"role": str, "content": str}``
dicts. A chat model was trained on its tokenizer's chat template (a Jinja string in
``tokenizer.chat_template``), so a prompt must be rendered with that template, not joined by
hand. Rendering happens once, where data is loaded; from then on a prompt is a string like any
other, and the rest of llm_gym never sees messages.

* `render_prompt`: the prompt turns with the generation prompt (the text that opens the
  assistant's turn), which is what the policy continues. A prompt whose last message is the
  assistant's is a prefill: it is rendered with ``continue_final_message=True`` (as TRL does),
  so the policy continues that message instead of starting a new turn.
* `render_completion`: what an answer adds after that rendered prompt, found as TRL finds it:
  render prompt + answer without a generation prompt, check that it starts with the rendered
  prompt, and keep the rest (the answer and its end-of-turn marker). The completion messages
  must all be the assistant's.

End of the completion. A template ends a turn with its end-of-turn text and often a newline
after it ("yes</s>\\n" for Zephyr, "yes<|im_end|>\\n" for ChatML). When that end-of-turn text is
the tokenizer's EOS string (``tokenizer.eos_token``), the completion is cut just after its
last occurrence ("yes</s>"): the encoders (SFT, DPO, the reward model) append an EOS only to
a completion that does not already end with one, so the answer ends with exactly one EOS, and
a sampled answer, which stops at EOS, reads like a recorded one. When the template ends the
turn with something else (ChatML's ``<|im_end|>`` in a tokenizer whose EOS is
``<|endoftext|>``), the text is kept as rendered and the encoders append the EOS after it.

Errors. A template that raises (Gemma's ``raise_exception('System role not supported')``) is
reported as a `ChatError` carrying the template's message; the loaders of `llm_gym.core.data`
add the file and line or row.

The rendered text keeps everything the template emits, a BOS string from ``{{ bos_token }}``
included; `llm_gym.models.text.encode` then makes sure a tokenizer that adds its own BOS does
not add a second one.

The tokenizer is duck-typed (anything with ``apply_chat_template`` and ``chat_template``), so
this module needs neither transformers nor torch.

>>> is_messages([{"role": "user", "content": "hi"}]), is_messages("hi"), is_messages([])
(True, False, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["ChatError", "ChatTokenizer", "check_messages", "is_messages", "looks_like_messages",
           "render_completion", "render_prompt"]

Message = Mapping[str, Any]
"""One chat turn: ``{"role": "user" | "assistant" | "system" | ..., "content": str}``."""


class ChatError(ValueError):
    """Messages or a chat template could not be used; the message says what is wrong and how to fix it."""


class ChatTokenizer(Protocol):
    """What rendering needs of a tokenizer (a Hugging Face tokenizer has both)."""

    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Render `conversation` with the chat template (``tokenize=False`` returns a str)."""
        ...


def looks_like_messages(x: object) -> bool:
    """True when `x` is meant as a conversation: a list or tuple (not a string) that is empty or holds mappings.

    This is what decides how a record's field is read (text or messages); `check_messages` then
    says what is wrong with a malformed one, where a plain "is not a string" would not help.
    """
    return isinstance(x, (list, tuple)) and all(isinstance(m, Mapping) for m in x)


def is_messages(x: object) -> bool:
    """True when `x` is a valid conversation: a non-empty list of ``{"role": str, "content": str}`` dicts."""
    try:
        check_messages(x)
    except ChatError:
        return False
    return True


def check_messages(x: object, where: str = "messages") -> list[dict[str, Any]]:
    """`x` as a list of plain message dicts, or an error naming `where` and the message at fault.

    Raises:
        ChatError: `x` is not a list, is empty, or a message lacks a string ``role`` or ``content``.
    """
    if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)):
        raise ChatError(f"{where}: chat messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                        f"got {type(x).__name__}")
    if len(x) == 0:
        raise ChatError(f"{where}: the list of chat messages is empty; give at least one {{'role', 'content'}} message")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(x):
        if not isinstance(m, Mapping):
            raise ChatError(f"{where}: message {i} is {type(m).__name__}, not a {{'role': ..., 'content': ...}} dict")
        for key in ("role", "content"):
            if key not in m:
                raise ChatError(f"{where}: message {i} has no {key!r} (found {list(m)}); every message needs "
                                "'role' and 'content'")
            if not isinstance(m[key], str):
                hint = " (multimodal content lists are not supported; give text)" if key == "content" else ""
                raise ChatError(f"{where}: message {i}: {key!r} must be a string, got {type(m[key]).__name__}{hint}")
        out.append(dict(m))
    return out


def render_prompt(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> str:
    """The prompt text of `messages`: the chat template with the generation prompt, ready for the policy to continue.

    A last message from the assistant is a prefill: the text ends inside it (``continue_final_message``).

    Raises:
        ChatError: the messages are malformed, the tokenizer has no chat template, or the template raised.
    """
    return _render_prompt(tokenizer, check_messages(messages))


def render_completion(tokenizer: ChatTokenizer, prompt_messages: Sequence[Message],
                      completion_messages: Sequence[Message]) -> str:
    """The text `completion_messages` add after ``render_prompt(tokenizer, prompt_messages)``, up to the EOS.

    ``render_prompt(...) + render_completion(...)`` is the whole conversation as the template
    renders it, less what the template writes after the last EOS string (see the module
    docstring), so SFT and the reward model read the answer exactly as it follows the prompt.
    After a prefill (the prompt ends with an assistant message) the first completion message
    continues that message.

    Raises:
        ChatError: malformed messages, a completion message that is not the assistant's, no chat
            template, a template that raised, or one that does not render the prompt (with its
            generation prompt) as the start of prompt + completion.
    """
    prompt = check_messages(prompt_messages, "prompt messages")
    completion = check_messages(completion_messages, "completion messages")
    for i, m in enumerate(completion):
        if m["role"] != "assistant":
            raise ChatError(f"completion messages: message {i} has role {m['role']!r}; a completion is the assistant's "
                            "answer, so its messages have role 'assistant' (put other turns in the prompt)")
    prompt_text = _render_prompt(tokenizer, prompt)
    if prompt[-1]["role"] == "assistant":  # a prefill: the answer goes on inside the prompt's last message
        merged = {**completion[0], "content": prompt[-1]["content"] + completion[0]["content"]}
        conversation = [*prompt[:-1], merged, *completion[1:]]
    else:
        conversation = prompt + completion
    full = _render(tokenizer, conversation, add_generation_prompt=False)
    if not full.startswith(prompt_text):
        raise ChatError(
            "the chat template does not render the prompt as the start of prompt + completion, so the completion's "
            f"text cannot be told apart: the prompt renders as {prompt_text!r} but prompt + completion as {full!r}; "
            "use a template whose generation prompt opens the assistant turn exactly as an assistant message does "
            "(some templates drop or rewrite earlier turns when the last message is the assistant's)"
        )
    return _cut_after_eos(full[len(prompt_text):], getattr(tokenizer, "eos_token", None))


def _cut_after_eos(text: str, eos: object) -> str:
    """`text` cut just after its last `eos` when only whitespace follows it (the template's newline after a turn).

    >>> _cut_after_eos("yes</s>\\n", "</s>"), _cut_after_eos("yes<|im_end|>\\n", "<|endoftext|>")
    ('yes</s>', 'yes<|im_end|>\\n')
    """
    if not isinstance(eos, str) or not eos:
        return text
    end = text.rfind(eos) + len(eos)
    if end >= len(eos) and not text[end:].strip():
        return text[:end]
    return text  # the template ends the turn with something else: the encoders append the EOS after it


def _render_prompt(tokenizer: ChatTokenizer, messages: list[dict[str, Any]]) -> str:
    if messages[-1]["role"] == "assistant":  # a prefill, as TRL renders it
        return _render(tokenizer, messages, add_generation_prompt=False, continue_final_message=True)
    return _render(tokenizer, messages, add_generation_prompt=True)


def _render(tokenizer: ChatTokenizer, messages: list[dict[str, Any]], *, add_generation_prompt: bool,
            continue_final_message: bool = False) -> str:
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ChatError(f"chat messages need a tokenizer with a chat template; got {type(tokenizer).__name__}, which "
                        "has no apply_chat_template: pass the policy's tokenizer (policy.tokenizer)")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatError(
            f"the tokenizer ({type(tokenizer).__name__}) has no chat template (tokenizer.chat_template is None), so "
            "chat messages cannot be turned into text; use the chat/instruct version of the model, or set one: "
            "tokenizer.chat_template = \"{% for m in messages %}...{% endfor %}\" (a Jinja string, e.g. copied "
            "from a chat model of the same family), or give the prompts as plain strings"
        )
    # continue_final_message is passed only when set: duck-typed tokenizers may not know it
    extra = {"continue_final_message": True} if continue_final_message else {}
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **extra)
    except Exception as exc:  # jinja2's TemplateError, a template's raise_exception, TypeError...: one kind to the user
        roles = [m["role"] for m in messages]
        raise ChatError(
            f"the chat template refused these messages (roles {roles}): {exc}; change the messages to what the "
            "template accepts (e.g. fold a system message into the first user message when it says the system "
            "role is not supported) or set another tokenizer.chat_template"
        ) from exc
    if not isinstance(text, str):
        raise ChatError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str; "
                        "use a Hugging Face tokenizer or return the rendered text")
    return text
