"""Recorded preference data in the layouts people keep it in, read into `Comparison` records (for `RecordedOracle`).

Sources are those of `llm_gym.core.data.read_records`: ``.jsonl``, ``.json``, ``.csv``,
``.parquet`` files, a ``datasets.Dataset``, a pandas DataFrame, a list of dicts. Each record is
one comparison in one of these layouts (field names can be changed with ``prompt_field=``,
``chosen_field=``... ; extra fields are ignored):

* explicit pair: ``{"prompt": str, "chosen": str, "rejected": str}``, replayed as the query
  ``(chosen, rejected)`` with ranks ``(0, 1)``;
* implicit prompt (Anthropic HH-RLHF): ``{"chosen": str, "rejected": str}``, each the full
  text. The prompt is their longest common prefix cut back to its last whitespace character,
  which starts the completions (`implicit_prompt`): both completions then begin at a word
  boundary with their leading space ("...Assistant: I can help" against "...Assistant: I
  can't." gives the prompt "...Assistant: I" and the completions " can help", " can't."),
  where TRL's ``extract_prompt`` keeps the whole common prefix (less a trailing space) and
  would cut "can" from "can't". Only a common prefix without any whitespace is kept whole.
  A record whose texts are equal, share no leading text, or leave an empty completion is refused;
* conversational (TRL): ``prompt`` a list of chat messages and ``chosen``/``rejected`` lists of
  assistant messages, or, implicit, ``chosen``/``rejected`` full conversations whose shared
  leading messages are the prompt. They are rendered with the ``tokenizer=``'s chat template
  (`llm_gym.core.chat`): the prompt with its generation prompt, each completion as the text it
  adds after that;
* ``{"prompt": str, "completions": [str, str], "preference": "first" | "second" | "tie"}``;
* ``{"prompt": str, "completions": [str, ...], "ranks": [int, ...]}``: a K-way ranking (2 to 9
  completions), one rank per completion, 0 = best, equal = tie. Completions may be message
  lists when the prompt is.

Any of them may add ``"labeller": str``; without it (or null) the labeller is the default name.

A table (DataFrame, Dataset, Parquet, CSV) may mix layouts and have blank cells: a field that
is None, NaN, ``pd.NA`` or a blank CSV cell counts as absent (`llm_gym.core.data.is_absent`).
Empty texts are refused: an empty prompt or completion ("") is an error, not a comparison.
Errors name the file and line (JSONL, CSV) or row (JSON, Parquet, a Dataset), and the fields found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llm_gym.core.chat import ChatTokenizer, looks_like_messages
from llm_gym.core.data import DatasetError, Records, completion_text, field, prompt_text, read_records, suggest_field
from llm_gym.core.preferences import Comparison, ranks_from_choice

__all__ = ["implicit_prompt", "load_comparisons", "self_comparison"]


def load_comparisons(
    source: Any,
    *,
    name: str = "recorded",
    tokenizer: ChatTokenizer | None = None,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    completions_field: str = "completions",
    preference_field: str = "preference",
    ranks_field: str = "ranks",
    labeller_field: str = "labeller",
) -> list[Comparison]:
    """The comparisons in `source` (a path or records in memory), one per record, in order.

    Args:
        source: see the module docstring.
        name: the labeller of records that name none.
        tokenizer: the policy's tokenizer, whose chat template renders conversational records.
        prompt_field, chosen_field, ...: the names of the fields in the records.

    Raises:
        DatasetError: naming the file and line or row, for an unreadable file, a record in no
            known layout (with the fields found), a mistyped field, an unknown preference,
            invalid ranks, a text ranked against itself, or no comparisons at all.
    """
    fields = {"prompt": prompt_field, "chosen": chosen_field, "rejected": rejected_field,
              "completions": completions_field, "preference": preference_field, "ranks": ranks_field,
              "labeller": labeller_field}
    # read the fields of every layout (the union): a table may mix them
    records = read_records(source, "comparison", fields.values())
    comparisons = [_comparison(value, where, fields, name, tokenizer, records) for where, value in records.rows]
    if not comparisons:
        raise DatasetError(f"{records.source}: no comparisons in it; add one record per comparison "
                           "(see llm_gym.feedback.recorded for the layouts)")
    return comparisons


def implicit_prompt(chosen: str, rejected: str) -> int:
    """Where the shared prompt of two full texts ends: at the last whitespace inside their longest common prefix.

    The whitespace starts the completions, so both begin at a word boundary with their leading
    space, even when the answers start with the same words or one answer's first word is the
    start of the other's ("can" / "can't"). A common prefix without whitespace is kept whole
    (TRL's ``extract_prompt`` rule).

    >>> a, b = "Human: hi Assistant: hello", "Human: hi Assistant: go away"
    >>> n = implicit_prompt(a, b); a[:n], a[n:], b[n:]
    ('Human: hi Assistant:', ' hello', ' go away')
    >>> a, b = "Human: help? Assistant: I can help.", "Human: help? Assistant: I can't."
    >>> n = implicit_prompt(a, b); a[:n], a[n:], b[n:]
    ('Human: help? Assistant: I', ' can help.', " can't.")
    """
    n = 0
    for x, y in zip(chosen, rejected):
        if x != y:
            break
        n += 1
    # a word cut in two (" I can" + "'t.") would leave a completion that starts mid-word
    return next((i for i in range(n - 1, -1, -1) if chosen[i].isspace()), n)


def self_comparison(c: Comparison) -> str | None:
    """What is wrong with a record that ranks a text above itself (e.g. chosen == rejected), or None."""
    for i, j in sorted(tuple(sorted(pair)) for pair in c.pairs()):
        if c.completions[i] == c.completions[j]:
            return (
                f"completions {i + 1} and {j + 1} are the same text {c.completions[i]!r} but ranked apart; "
                "a text cannot be better than itself: fix the record (or drop it)"
            )
    return None


def _comparison(obj: Any, where: str, f: Mapping[str, str], default_labeller: str, tokenizer: ChatTokenizer | None,
                records: Records) -> Comparison:
    if not isinstance(obj, Mapping):
        json_like = records.noun == "field" and records.source.lower().endswith((".json", ".jsonl"))
        kind = "a JSON object" if json_like else "a record (a dict of fields)"
        raise DatasetError(f"{where}: expected {kind}, found {type(obj).__name__}")
    found = records.found(obj)
    labeller = field(obj, f["labeller"])
    labeller = default_labeller if labeller is None else labeller
    if not isinstance(labeller, str) or not labeller:
        raise DatasetError(f"{where}: {f['labeller']!r} must be a non-empty string, got {labeller!r}")
    has = {key: field(obj, name) is not None for key, name in f.items()}  # blank cells are absent fields
    if has["chosen"] or has["rejected"]:
        if has["completions"]:
            raise DatasetError(f"{where}: give either {f['chosen']!r}/{f['rejected']!r} or {f['completions']!r}, "
                               "not both")
        for key in ("chosen", "rejected"):
            if f[key] not in obj:
                raise DatasetError(f"{where}: missing field {f[key]!r} (found {found})")
        chosen, rejected = field(obj, f["chosen"]), field(obj, f["rejected"])
        if has["prompt"]:
            prompt = obj[f["prompt"]]
        else:
            prompt, chosen, rejected = _split_implicit(chosen, rejected, where, f, found)
        text = prompt_text(prompt, f"{where}: {f['prompt']!r}", tokenizer)
        completions = tuple(completion_text(prompt, c, f"{where}: {f[key]!r}", tokenizer)
                            for key, c in (("chosen", chosen), ("rejected", rejected)))
        if completions[0] == completions[1]:
            raise DatasetError(
                f"{where}: {f['chosen']!r} and {f['rejected']!r} are the same text {completions[0]!r}; a text cannot "
                "be better than itself: fix the record (or drop it)"
            )
        ranks: tuple[int, ...] = (0, 1)
    elif has["completions"]:
        if f["prompt"] not in obj:
            raise DatasetError(f"{where}: missing field {f['prompt']!r} (found {found}); pass prompt_field= if it "
                               "has another name")
        prompt, raw = field(obj, f["prompt"]), obj[f["completions"]]
        text = prompt_text(prompt, f"{where}: {f['prompt']!r}", tokenizer)
        kind = "strings" if isinstance(prompt, str) else "assistant message lists"
        if not isinstance(raw, list) or not all(isinstance(c, str) or looks_like_messages(c) for c in raw):
            raise DatasetError(f"{where}: {f['completions']!r} must be a list of {kind}")
        completions = tuple(completion_text(prompt, c, f"{where}: {f['completions']!r} item {i}", tokenizer)
                            for i, c in enumerate(raw))
        ranks = _ranks(obj, where, f, len(completions))
    else:
        guesses = {k: suggest_field(found, k) for k in ("prompt_field", "chosen_field", "rejected_field")}
        if guesses["chosen_field"] and guesses["rejected_field"]:
            fix = "pass " + ", ".join(f'{k}="{v}"' for k, v in guesses.items() if v)
        else:
            fix = "pass chosen_field= and rejected_field= (or completions_field=) if they have other names"
        raise DatasetError(
            f"{where}: no completions; give {f['chosen']!r} and {f['rejected']!r}, or {f['completions']!r} with "
            f"{f['ranks']!r} or {f['preference']!r}; found {found}; {fix}"
        )
    try:
        comparison = Comparison(text, completions, ranks, labeller)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{where}: {exc}") from exc
    problem = self_comparison(comparison)
    if problem:
        raise DatasetError(f"{where}: {problem}")
    return comparison


def _split_implicit(chosen: Any, rejected: Any, where: str, f: Mapping[str, str],
                    found: Sequence[str]) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of a record without a prompt: the shared start of two full texts or conversations."""
    no_prompt = f"{where}: missing field {f['prompt']!r} (found {found}), and"
    if isinstance(chosen, str) and isinstance(rejected, str):
        if chosen == rejected:
            raise DatasetError(f"{where}: {f['chosen']!r} and {f['rejected']!r} are the same text {chosen!r}; a text "
                               "cannot be better than itself: fix the record (or drop it)")
        n = implicit_prompt(chosen, rejected)
        if not chosen[:n].strip():
            raise DatasetError(
                f"{no_prompt} {f['chosen']!r} and {f['rejected']!r} share no leading text to take as the prompt (the "
                "implicit-prompt layout, as in HH-RLHF, holds full texts that start with the same prompt); add the "
                "prompt field, or pass prompt_field= if it has another name"
            )
        for key, rest, other in (("chosen", chosen[n:], "rejected"), ("rejected", rejected[n:], "chosen")):
            if not rest:
                raise DatasetError(
                    f"{where}: {f[key]!r} is the start of {f[other]!r}, so after their shared prompt {chosen[:n]!r} it "
                    "is empty; a comparison needs two answers: fix the record (or drop it)"
                )
        return chosen[:n], chosen[n:], rejected[n:]
    if looks_like_messages(chosen) and looks_like_messages(rejected):
        k = 0
        for a, b in zip(chosen, rejected):  # role and content only: extra keys (None from ragged Parquet) differ
            if (a.get("role"), a.get("content")) != (b.get("role"), b.get("content")):
                break
            k += 1
        if k == 0:
            raise DatasetError(f"{no_prompt} the conversations in {f['chosen']!r} and {f['rejected']!r} share no "
                               "leading messages to take as the prompt; add the prompt messages under the prompt field")
        if k == len(chosen) or k == len(rejected):
            raise DatasetError(f"{where}: the conversations in {f['chosen']!r} and {f['rejected']!r} "
                               + ("are the same" if len(chosen) == len(rejected) else "differ only in that one goes on "
                                  "after the other ends") + "; each must end with its own assistant answer")
        return list(chosen[:k]), list(chosen[k:]), list(rejected[k:])
    kinds = [type(x).__name__ if not looks_like_messages(x) else "messages" for x in (chosen, rejected)]
    raise DatasetError(f"{where}: {f['chosen']!r} and {f['rejected']!r} must both be strings or both chat message "
                       f"lists, got {kinds[0]} and {kinds[1]}")


def _ranks(obj: Mapping[str, Any], where: str, f: Mapping[str, str], k: int) -> tuple[int, ...]:
    has_ranks, has_preference = field(obj, f["ranks"]) is not None, field(obj, f["preference"]) is not None
    if has_ranks == has_preference:
        raise DatasetError(
            f"{where}: with {f['completions']!r} give exactly one of {f['ranks']!r} (list, 0 = best) "
            f"or {f['preference']!r} ('first', 'second' or 'tie')"
        )
    if has_preference:
        if k != 2:
            raise DatasetError(
                f"{where}: {f['preference']!r} is for 2 completions, got {k}; use {f['ranks']!r} for K-way rankings"
            )
        try:
            return ranks_from_choice(obj[f["preference"]])
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
    if not isinstance(obj[f["ranks"]], list):
        raise DatasetError(f"{where}: {f['ranks']!r} must be a list of ints (0 = best), got {obj[f['ranks']]!r}")
    return tuple(obj[f["ranks"]])
