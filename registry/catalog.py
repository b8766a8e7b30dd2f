"""The registry: every card the plugins contributed, looked up by id, alias or hub repository.

Names are case-insensitive. A name resolves by rank: a card id beats an alias, an alias beats a
hub repository name. Two cards claiming one name at the same rank (two ids, two aliases) are a
conflict: the name is reported with both plugins and distributions, and looking it up is an error
until one is removed. An alias that collides with another card's id is reported too; the id keeps
the name. Conflicts between hub repository names are not errors (several cards may share a
repository); looking such a name up lists the candidates. modeldeck's own cards (distribution `modeldeck`) are
never displaced: a third-party card with a first-party id is left out, and a first-party card keeps a name a third
party also claims; first-party prompt formats and layouts likewise win over third-party ones of the same name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeldeck.registry.cardfile import load_card_file
from modeldeck.registry.diagnostics import CardError, Diagnostic, ModeldeckError
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.manager import (
    Contribution,
    LoadResult,
    PluginInfo,
    load_entry_points,
    load_plugins,
    selection_from_env,
)
from modeldeck.registry.schema import Card, PromptFormat

__all__ = ["CardConflictError", "CardNotFoundError", "Entry", "Registry"]

_RANKS = ("id", "alias", "hub repository")


class CardNotFoundError(ModeldeckError, LookupError):
    def __init__(self, name: str, suggestions: list[str]):
        self.name, self.suggestions = name, suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"No card named {name!r}.{hint} Run `modeldeck list` to see every card.")


class CardConflictError(ModeldeckError, LookupError):
    def __init__(self, name: str, claimants: list[Entry]):
        self.name, self.claimants = name, claimants
        who = "; ".join(f"card {e.card.id!r} from plugin {e.plugin.label}" for e in claimants)
        super().__init__(
            f"The name {name!r} is claimed by more than one card: {who}. "
            "Use a card's unique id, or uninstall one of the plugins (pip uninstall DISTRIBUTION)."
        )


@dataclass(frozen=True)
class Entry:
    """A card in the registry, with the plugin that contributed it and the file it came from."""

    card: Card
    plugin: PluginInfo
    where: str


class Registry:
    def __init__(self, loaded: LoadResult):
        self._plugins = loaded.plugins
        self.diagnostics: list[Diagnostic] = list(loaded.diagnostics)
        self._formats = self._unique(loaded.prompt_formats, "prompt format", lambda f: f.name)
        self._layouts = self._unique(loaded.checkpoint_layouts, "checkpoint layout", lambda lay: lay.name)
        self._entries = self._keep_first_party_names([e for e in map(self._resolve, loaded.cards) if e is not None])
        self._index = self._build_index()

    @classmethod
    def from_entry_points(cls, selection: set[str] | None = None) -> Registry:
        """All installed plugins (or those selected, by default from $MODELDECK_PLUGINS)."""
        return cls(load_entry_points(selection if selection is not None else selection_from_env()))

    @classmethod
    def from_plugins(cls, plugins: Iterable[tuple[str, object]]) -> Registry:
        """A registry of plugin objects given in-process, e.g. for tests or embedding."""
        return cls(load_plugins(plugins))

    # --- lookup ----------------------------------------------------------------------------------

    def get(self, name: str) -> Card:
        return self.entry(name).card

    def entry(self, name: str) -> Entry:
        claims = self._index.get(name.strip().lower())
        if not claims:
            raise CardNotFoundError(name, self.suggest(name))
        best = min(rank for rank, _ in claims)
        winners = list({id(e): e for rank, e in claims if rank == best}.values())
        own = [w for w in winners if w.plugin.first_party]
        if len(winners) > 1 and len(own) == 1:  # modeldeck's own card keeps a name a third party also claims
            return own[0]
        if len(winners) > 1:
            raise CardConflictError(name, winners)
        return winners[0]

    def card_or_file(self, name: str | os.PathLike[str]) -> tuple[Card, str]:
        """The card NAME means, and where it comes from: a card file, resolved against the installed prompt formats
        and layouts (`resolve_card`), or an installed card (id, alias or hub repository) and its file.

        NAME is a card file when it is a path object, ends in .yaml or .yml, or names an existing file; anything
        else is looked up. The one rule for every place that takes "a card id or a card file" (the CLI's commands,
        `runtime.load`). Raises CardError for a file that is not a valid card, CardNotFoundError /
        CardConflictError (LookupErrors) for a name no installed card has, or more than one claims."""
        path = Path(name)
        if not isinstance(name, str) or path.suffix in (".yaml", ".yml") or path.is_file():
            return self.resolve_card(load_card_file(path), str(path)), str(path)
        entry = self.entry(name)
        return entry.card, entry.where

    def suggest(self, name: str) -> list[str]:
        """Ids of the cards whose names start like `name` or are close to it."""
        query = name.strip().lower()
        names = sorted(self._index)
        starts = [n for n in names if n.startswith(query) or query.startswith(n)]
        close = difflib.get_close_matches(query, names, n=3, cutoff=0.6)
        ids = [entry.card.id for n in starts + close for _, entry in self._index[n]]
        return list(dict.fromkeys(ids))[:5]

    def cards(self) -> list[Card]:
        """Every usable card, by id (cards whose id is contested are left out: see `diagnostics`)."""
        return [e.card for e in self.entries()]

    def entries(self) -> list[Entry]:
        usable = []
        for entry in self._entries:
            try:
                usable.append(self.entry(entry.card.id))
            except CardConflictError:
                continue
        return sorted({id(e): e for e in usable}.values(), key=lambda e: e.card.id)

    def plugins(self) -> list[PluginInfo]:
        return sorted(self._plugins, key=lambda p: p.name)

    def prompt_formats(self) -> dict[str, PromptFormat]:
        return {name: c.item for name, c in sorted(self._formats.items())}

    def checkpoint_layouts(self) -> dict[str, CheckpointLayout]:
        return {name: c.item for name, c in sorted(self._layouts.items())}

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    # --- building --------------------------------------------------------------------------------

    def resolve_card(self, card: Card, where: str) -> Card:
        """Fill in a named prompt format and check the checkpoint layout is known; CardError if not."""
        problems = []
        if card.architecture.checkpoint_layout not in self._layouts:
            problems.append(
                Diagnostic(
                    "error",
                    f"unknown checkpoint layout {card.architecture.checkpoint_layout!r}",
                    where,
                    field="architecture.checkpoint_layout",
                    hint=f"registered layouts: {', '.join(sorted(self._layouts)) or 'none'} "
                    "(a plugin can add one with the register_checkpoint_layouts hook)",
                )
            )
        if isinstance(card.prompt_format, str):
            named = self._formats.get(card.prompt_format)
            if named is None:
                problems.append(
                    Diagnostic(
                        "error",
                        f"unknown prompt format {card.prompt_format!r}",
                        where,
                        field="prompt_format",
                        hint=f"registered formats: {', '.join(sorted(self._formats)) or 'none'}; "
                        "or write the format inline",
                    )
                )
            else:
                card = card.model_copy(update={"prompt_format": named.item})
        if problems:
            raise CardError(problems)
        return card

    def _resolve(self, contribution: Contribution) -> Entry | None:
        try:
            card = self.resolve_card(contribution.item, contribution.where)
        except CardError as exc:
            self.diagnostics += [d.from_plugin(contribution.plugin.label) for d in exc.diagnostics]
            return None
        return Entry(card, contribution.plugin, contribution.where)

    def _unique(
        self, contributions: list[Contribution], what: str, key: Callable[[Any], str]
    ) -> dict[str, Contribution]:
        """One contribution per name: modeldeck's own first (a third party cannot replace them), then by plugin."""
        chosen: dict[str, Contribution] = {}
        for c in sorted(contributions, key=lambda c: not c.plugin.first_party):
            name = key(c.item)
            if name in chosen:
                first = chosen[name]
                kept = "modeldeck's own is used" if first.plugin.first_party else "the first is used"
                self.diagnostics.append(
                    Diagnostic(
                        "error",
                        f"{what} {name!r} is registered by plugin {first.plugin.label} and by plugin {c.plugin.label}; "
                        f"{kept}",
                        f"plugin {c.plugin.label}",
                        hint=f"rename one of them, or uninstall one plugin (pip uninstall {c.plugin.distribution})",
                        plugin=c.plugin.label,
                    )
                )
                continue
            chosen[name] = c
        return chosen

    def _keep_first_party_names(self, entries: list[Entry]) -> list[Entry]:
        """Third-party cards whose id is the id or an alias of one of modeldeck's own cards are left out (an error
        blamed on them): a plugin cannot disable or stand in for a first-party card. (An alias of theirs that
        collides keeps losing the name, as `entry` decides.)"""
        owned = {n.lower(): e for e in entries if e.plugin.first_party for n in (e.card.id, *e.card.aliases)}
        kept = []
        for entry in entries:
            taken = [entry.card.id] if entry.card.id.lower() in owned else []
            if entry.plugin.first_party or not taken:
                kept.append(entry)
                continue
            self.diagnostics.append(
                Diagnostic(
                    "error",
                    f"card {entry.card.id!r} from plugin {entry.plugin.label} claims the name {taken[0]!r} of "
                    f"modeldeck's own card {owned[taken[0].lower()].card.id!r}; the plugin's card is left out",
                    entry.where,
                    field="id",
                    hint=f"give the card another id and aliases, or uninstall {entry.plugin.distribution}",
                    plugin=entry.plugin.label,
                )
            )
        return kept

    def _build_index(self) -> dict[str, list[tuple[int, Entry]]]:
        """name -> (rank, entry) claims; each card claims a name once, at its best rank. Linear in the names: 10,000
        cards sharing one repository are 10,000 claims of one name, appended without comparing them."""
        index: dict[str, list[tuple[int, Entry]]] = {}
        for entry in self._entries:
            card = entry.card
            repo = [(2, card.source.repo.lower())] if card.source.repo else []
            names: dict[str, int] = {}
            for rank, name in [(0, card.id), *((1, a.lower()) for a in card.aliases), *repo]:
                names.setdefault(name, rank)  # ranks ascend: the first is the best
            for name, rank in names.items():
                index.setdefault(name, []).append((rank, entry))
        self._report_conflicts(index)
        return index

    def _report_conflicts(self, index: dict[str, list[tuple[int, Entry]]]) -> None:
        """One diagnostic per pair of cards that claim a name (ids and aliases; repositories may be shared).

        Each claimant of a name is paired with the name's first claimant at the best rank (the card whose id it is,
        if any), never every claimant with every other: k cards sharing an alias are k - 1 diagnostics, linear."""
        pairs: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
        entries = {id(e): e for e in self._entries}
        for name, claims in sorted(index.items()):
            named = [(rank, e) for rank, e in claims if rank < 2]  # repositories may be shared: not compared
            if len(named) < 2:
                continue
            best = min(range(len(named)), key=lambda i: named[i][0])
            for i, (rank, other) in enumerate(named):  # each pair in the cards' order, as their other names are
                if i != best:
                    (rank_a, a), (rank_b, b) = (
                        (named[best], (rank, other)) if best < i else ((rank, other), named[best])
                    )
                    pairs.setdefault((id(a), id(b)), []).append((rank_a, rank_b, name))
        for (ida, idb), shared in pairs.items():
            first, second = entries[ida], entries[idb]
            names = ", ".join(repr(name) for _, _, name in shared)
            dists = sorted({e.plugin.distribution or e.plugin.name for e in (first, second)})
            rank_a, rank_b, name = min(shared)
            if rank_a == rank_b:
                message = (
                    f"{_RANKS[rank_a]} {name!r} is claimed by card {first.card.id!r} from plugin {first.plugin.label} "
                    f"and by card {second.card.id!r} from plugin {second.plugin.label}; {names} cannot be looked up"
                )
                blamed, field, fix = second, "id" if rank_a == 0 else "aliases", "rename one card"
            else:
                owner, blamed = (first, second) if rank_a == 0 else (second, first)
                message = (
                    f"alias {name!r} of card {blamed.card.id!r} (plugin {blamed.plugin.label}) collides with the id "
                    f"of card {owner.card.id!r} (plugin {owner.plugin.label}); the id keeps the name"
                )
                field, fix = "aliases", f"remove {name!r} from the aliases of {blamed.card.id!r}"
            self.diagnostics.append(
                Diagnostic(
                    "error",
                    message,
                    blamed.where,
                    field=field,
                    hint=f"{fix}, or uninstall one of the distributions ({' or '.join(dists)})",
                    plugin=blamed.plugin.label,
                )
            )
