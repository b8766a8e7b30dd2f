"""Prompt formats render exactly what the upstream pipelines produce (../shared/reference/prompt-formats-and-tokens.md)."""

from __future__ import annotations

import pytest

from modeldeck import registry
from modeldeck.registry import PromptError, render_prompt

H2OGPT = "h2ogpt-oig-oasst1-falcon-40b"


def render(card_id: str, conversation, system: str | None = None) -> str:
    return render_prompt(registry.get(card_id).format, conversation, system)


def test_astrid_matches_its_pipeline_preprocess():
    assert (
        render("astrid-1b", "Why is drinking water so healthy?")
        == "<|prompt|>Why is drinking water so healthy?<|endoftext|><|answer|>"
    )


def test_h2ogpt_single_turn_has_no_trailing_space():
    assert render(H2OGPT, "Hi") == "<human>: Hi\n<bot>:"


def test_h2ogpt_three_turns_match_h2ogpt_test_prompter(h2ogpt_chat):
    messages, expected = h2ogpt_chat
    assert render(H2OGPT, messages) == expected


def test_aira_wraps_the_instruction_in_its_special_markers():
    assert render("aira-2-1b1", "What is a language model?") == (
        "<|startofinstruction|>What is a language model?<|endofinstruction|>"
    )
    two_turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert render("aira-2-1b1", two_turns) == (
        "<|startofinstruction|>Hi<|endofinstruction|>Hello.<|endofcompletion|>"
        "<|startofinstruction|>Bye<|endofinstruction|>"
    )


@pytest.mark.parametrize("card_id", ["pythia-1.4b", "gpt-jx-3b"])
def test_plain_format_passes_text_through(card_id):
    assert registry.get(card_id).format.name == "plain"
    assert render(card_id, "Once upon a time,") == "Once upon a time,"


def test_plain_format_refuses_chat_and_system_prompts():
    with pytest.raises(PromptError, match="takes a single user message"):
        render(
            "pythia-1.4b",
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        )
    with pytest.raises(PromptError, match="has no system prompt; put the instructions in the user message"):
        render("pythia-1.4b", "x", system="Be brief.")


def test_system_prompt_is_prepended_where_the_format_says_so():
    assert render(H2OGPT, "Hi", system="Be brief.") == "<human>: Be brief.\n\nHi\n<bot>:"


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "no user message"),
        ([{"role": "assistant", "content": "x"}], "message 0 is from 'assistant' where 'user' was expected"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "last message must be from the user",
        ),
        ([{"role": "tool", "content": "a"}], "role 'tool'"),
        ([{"role": "user"}], "needs 'content' as a string"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
            "a system message may only come first",
        ),
    ],
)
def test_conversation_errors(conversation, message):
    with pytest.raises(PromptError, match=message):
        render(H2OGPT, conversation)
