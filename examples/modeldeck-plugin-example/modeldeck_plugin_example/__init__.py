"""An example modeldeck plugin: registers the SmolLM-135M card that ships beside this module."""

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from modeldeck.registry import hookimpl
from modeldeck.registry.hookspecs import CardSource


@hookimpl
def register_cards(register: Callable[[CardSource], None]) -> None:
    register(Path(str(resources.files(__name__).joinpath("smollm-135m.yaml"))))
