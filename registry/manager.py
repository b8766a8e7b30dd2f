"""Finding plugins through entry points and collecting what each one registers, fault-isolated.

A plugin that fails to import, fails pluggy's validation, or raises inside a hook (sys.exit() and
KeyboardInterrupt included) is recorded as a diagnostic naming the plugin and its distribution; nothing
it registered is kept, and every other plugin loads as usual. What a plugin prints goes to stderr, a
plugin slower than LOAD_BUDGET to import and run is named in a warning (and `modeldeck plugins` shows
each one's time), and a registered Card is validated again into a copy the plugin has no handle on. A card that fails validation is recorded with its file and line; the rest of
its plugin's cards stay.

``MODELDECK_PLUGINS`` selects plugins for hermetic runs: unset loads all; ``none`` (or empty) loads
none; ``a,b`` loads only the plugins (entry-point names or distribution names) listed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from modeldeck.registry import hookspecs
from modeldeck.registry.cardfile import card_from_data, load_card_file
from modeldeck.registry.diagnostics import CardError, Diagnostic
from modeldeck.registry.hookspecs import PROJECT, CardSource
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.schema import Card, PromptFormat

__all__ = ["ENV_SELECT", "Contribution", "LoadResult", "PluginInfo", "load_entry_points", "load_plugins"]

ENV_SELECT = "MODELDECK_PLUGINS"
LOAD_BUDGET = 0.5  # seconds a plugin may take to import and run its hooks before a warning names it
PLUGIN_FAILURES = (Exception, SystemExit, KeyboardInterrupt)  # what a plugin's code may raise, all reported
_HOOKS = ("register_prompt_formats", "register_checkpoint_layouts", "register_cards")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    cards: tuple[str, ...] = ()
    prompt_formats: tuple[str, ...] = ()
    checkpoint_layouts: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0  # import and hooks

    @property
    def first_party(self) -> bool:
        """Installed with modeldeck itself: its names (cards, prompt formats, layouts) cannot be taken over."""
        return self.distribution == "modeldeck"

    @property
    def label(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "not installed as a distribution"
        return f"{self.name} ({dist})"


@dataclass(frozen=True)
class Contribution:
    """Something a plugin registered, with where it came from."""

    item: Any  # Card | PromptFormat | CheckpointLayout
    plugin: PluginInfo
    where: str  # the card file, or the plugin's module


@dataclass
class LoadResult:
    plugins: list[PluginInfo] = field(default_factory=list)
    cards: list[Contribution] = field(default_factory=list)
    prompt_formats: list[Contribution] = field(default_factory=list)
    checkpoint_layouts: list[Contribution] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def selection_from_env() -> set[str] | None:
    value = os.environ.get(ENV_SELECT)
    if value is None:
        return None
    names = {n.strip().lower() for n in value.split(",") if n.strip()}
    return set() if names <= {"none"} else names


def load_entry_points(selection: set[str] | None = None) -> LoadResult:
    """Load every plugin in the `modeldeck` entry-point group (or the selected ones)."""
    result = LoadResult()
    plugins: list[tuple[PluginInfo, object]] = []
    imported: dict[str, float] = {}  # seconds each plugin took to import
    seen: set[tuple[str, str]] = set()
    available: set[str] = set()
    for ep in sorted(metadata.entry_points(group=PROJECT), key=lambda e: e.name):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        dist = ep.dist.metadata["Name"] if ep.dist is not None else None
        info = PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist is not None else None)
        available |= {ep.name.lower(), (dist or "").lower()}
        if selection is not None and not ({ep.name.lower(), (dist or "").lower()} & selection):
            continue
        started = time.perf_counter()
        try:
            with _plugin_code():
                plugins.append((info, ep.load()))
        except PLUGIN_FAILURES as exc:  # any import failure is the plugin's, not ours (sys.exit() too)
            result.plugins.append(_failed(info, result, f"failed to import {ep.value}: {_describe(exc)}"))
        else:
            imported[info.name] = time.perf_counter() - started
    for unknown in sorted((selection or set()) - available):
        result.diagnostics.append(
            Diagnostic(
                "warning",
                f"{ENV_SELECT} names {unknown!r}, but no installed plugin or distribution has that name",
                f"${ENV_SELECT}",
                hint=f"installed plugins: {', '.join(sorted(available - {''})) or 'none'}",
            )
        )
    _collect(plugins, result, imported)
    return result


def load_plugins(plugins: Iterable[tuple[str, object]]) -> LoadResult:
    """Load plugin objects given in-process as (name, module_or_object): no entry points involved."""
    result = LoadResult()
    infos = [(PluginInfo(name, getattr(obj, "__name__", type(obj).__name__)), obj) for name, obj in plugins]
    _collect(infos, result)
    return result


def _collect(
    plugins: list[tuple[PluginInfo, object]], result: LoadResult, imported: dict[str, float] | None = None
) -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for info, obj in plugins:
        try:
            pm.register(obj, name=info.name)
        except Exception as exc:  # noqa: BLE001 - e.g. pluggy.PluginValidationError: a hook with wrong arguments
            result.plugins.append(_failed(info, result, f"is not a valid modeldeck plugin: {_describe(exc)}"))
            continue
        started = time.perf_counter()
        registered = _run_hooks(pm, info, obj)
        seconds = (imported or {}).get(info.name, 0.0) + time.perf_counter() - started
        if isinstance(registered, str):
            result.plugins.append(_failed(info, result, registered))
            continue
        formats, layouts, cards, card_errors = registered
        result.plugins.append(
            PluginInfo(
                info.name,
                info.module,
                info.distribution,
                info.version,
                cards=tuple(c.item.id for c in cards),
                prompt_formats=tuple(f.item.name for f in formats),
                checkpoint_layouts=tuple(lay.item.name for lay in layouts),
                seconds=seconds,
            )
        )
        done = result.plugins[-1]
        if seconds > LOAD_BUDGET:
            result.diagnostics.append(
                Diagnostic(
                    "warning",
                    f"plugin {done.label} took {seconds:.1f} s to load (the budget is {LOAD_BUDGET:g} s); every "
                    "modeldeck command waits for it",
                    f"plugin {done.label}",
                    hint=f"make its import and hooks cheaper, or load other plugins only ({ENV_SELECT}=name,name)",
                )
            )
        result.prompt_formats += [Contribution(c.item, done, c.where) for c in formats]
        result.checkpoint_layouts += [Contribution(c.item, done, c.where) for c in layouts]
        result.cards += [Contribution(c.item, done, c.where) for c in cards]
        result.diagnostics += card_errors


def _run_hooks(
    pm: pluggy.PluginManager, info: PluginInfo, obj: object
) -> str | tuple[list[Contribution], list[Contribution], list[Contribution], list[Diagnostic]]:
    """Call one plugin's hooks; returns its contributions, or a description of how it failed."""
    collected: dict[str, list[Contribution]] = {hook: [] for hook in _HOOKS}
    card_errors: list[Diagnostic] = []
    module_where = getattr(obj, "__file__", None) or info.module

    def add_card(source: CardSource) -> None:
        try:
            card, where = _read_card(source, module_where)
        except CardError as exc:
            card_errors.extend(d.from_plugin(info.label) for d in exc.diagnostics)
            return
        collected["register_cards"].append(Contribution(card, info, where))

    def typed(hook: str, kind: type[Any]) -> Callable[[Any], None]:
        def register(item: Any) -> None:
            if not isinstance(item, kind):
                raise TypeError(f"{hook} registers {kind.__name__} objects, got {type(item).__name__}")
            collected[hook].append(Contribution(item, info, module_where))

        return register

    callbacks: dict[str, Callable[[Any], None]] = {
        "register_cards": add_card,
        "register_prompt_formats": typed("register_prompt_formats", PromptFormat),
        "register_checkpoint_layouts": typed("register_checkpoint_layouts", CheckpointLayout),
    }
    for hook in _HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is not obj:
                continue
            try:
                with _plugin_code():
                    impl.function(*[callbacks[hook] for _ in impl.argnames])
            except PLUGIN_FAILURES as exc:  # a plugin's bug (or its sys.exit()) must not take the registry down
                return f"raised in its {hook} hook: {_describe(exc)}"
    formats, layouts, cards = (collected[h] for h in _HOOKS)
    return formats, layouts, cards, card_errors


def _read_card(source: CardSource, module_where: str) -> tuple[Card, str]:
    if isinstance(source, Card):  # validated again into a copy: the plugin keeps no handle on the registry's card
        return card_from_data(source.model_dump(mode="python", by_alias=True), module_where), module_where
    if isinstance(source, dict):
        return card_from_data(source, module_where), module_where
    path = Path(str(source))
    return load_card_file(path), str(path)


def _failed(info: PluginInfo, result: LoadResult, what: str) -> PluginInfo:
    failed = PluginInfo(info.name, info.module, info.distribution, info.version, error=what)
    hint = (
        f"fix the plugin, or uninstall it (pip uninstall {info.distribution})"
        if info.distribution
        else "fix the plugin"
    ) + f"; to load other plugins only, set {ENV_SELECT}=name,name"
    result.diagnostics.append(Diagnostic("error", f"plugin {what}", f"plugin {failed.label}", hint=hint))
    return failed


@contextlib.contextmanager
def _plugin_code() -> Iterator[None]:
    """Around a plugin's import and hooks: what it prints goes to stderr, never into a command's output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
