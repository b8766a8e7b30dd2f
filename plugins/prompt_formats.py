"""Named prompt formats shared by cards: `plain`, for base models that complete text as given."""

from collections.abc import Callable

from modeldeck.registry.hookspecs import hookimpl
from modeldeck.registry.schema import PromptFormat

PLAIN = PromptFormat(
    name="plain",
    description="Base-model completion: the prompt is the user's text, unchanged; no system prompt, one turn.",
    multi_turn=False,
)


@hookimpl
def register_prompt_formats(register: Callable[[PromptFormat], None]) -> None:
    register(PLAIN)
