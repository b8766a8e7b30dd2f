"""Where a card's checkpoint lives on disk: an explicit folder, a folder bundled in a package, or the HF hub cache.

`resolve_weights` returns a local folder holding config.json, the weights and the tokenizer files. Downloads go
through `huggingface_hub.snapshot_download`, restricted to the files the card needs, so `HF_HOME`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE=1` and `HF_TOKEN` behave as they do everywhere else in the Hugging Face stack. Every failure is a
`ModeldeckError` that says what is missing and what to do. No torch here.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.resources
import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import Card

__all__ = ["HubError", "PickleRefusedError", "UnknownRevisionError", "WeightsNotFoundError", "resolve_weights"]

SAFETENSORS = ["*.safetensors", "model.safetensors.index.json"]
PICKLE = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
CONFIGS = ["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json"]


class WeightsNotFoundError(ModeldeckError, FileNotFoundError):
    """No usable checkpoint folder: a missing path, a cache miss, or a folder without config.json or weights."""


class UnknownRevisionError(ModeldeckError, ValueError):
    """A revision the card does not list."""


class PickleRefusedError(ModeldeckError):
    """The checkpoint is a pickle (pytorch_model.bin) and the caller did not opt in with allow_pickle=True."""


class HubError(ModeldeckError):
    """The Hugging Face hub refused or could not be reached (repository, revision, access, network)."""


def resolve_weights(
    card: Card,
    *,
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
) -> Path:
    """The local folder holding the card's checkpoint (config.json, *.safetensors, tokenizer files).

    `weights=DIR` is used as-is; a card with `source.bundled` uses the folder inside that package; otherwise the
    card's hub repository is downloaded into (or found in) the Hugging Face cache. Only `weights=` and bundled
    folders avoid the hub entirely; `HF_HUB_OFFLINE=1` makes the hub path use the cache only.
    """
    if weights is not None:
        folder = Path(weights).expanduser().resolve()
        if not folder.is_dir():
            what = "is not a directory" if folder.exists() else "does not exist"
            raise WeightsNotFoundError(
                f"weights folder {folder} {what}; pass weights= a folder holding config.json and the "
                f"{card.id} checkpoint, or leave weights unset to use {card.source.repo} from the Hugging Face hub"
            )
        return _check_folder(folder, card, allow_pickle, f"weights folder {folder}")
    if card.source.bundled:
        return _check_folder(_bundled_folder(card), card, allow_pickle, f"bundled weights {card.source.bundled}")
    revision = _check_revision(card, revision or card.source.revision)
    patterns = [*SAFETENSORS, *CONFIGS, *card.tokenizer.files]
    if card.source.format == "pytorch":
        if not allow_pickle:
            raise PickleRefusedError(
                f"{card.source.repo} (card {card.id}) only ships pickle checkpoints (pytorch_model.bin); loading a "
                "pickle can execute arbitrary code. Pass allow_pickle=True (--allow-pickle) if you trust the "
                f"repository, or run `modeldeck convert {card.id}` once to convert it to safetensors and load that "
                "with weights=DIR"
            )
        patterns += PICKLE
    folder = _download(card, revision, patterns, progress)
    return _check_folder(folder, card, allow_pickle, f"{card.source.repo}@{revision} ({folder})")


def _bundled_folder(card: Card) -> Path:
    package, _, relative = (card.source.bundled or "").partition(":")
    try:
        root = importlib.resources.files(package)
    except (ModuleNotFoundError, TypeError) as error:  # TypeError: a module, not a package (Python 3.10, 3.11)
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in package {package!r}, which is not installed ({error}); "
            "install the plugin that provides it, or pass weights=DIR"
        ) from error
    folder = root.joinpath(*relative.split("/"))
    if not isinstance(folder, Path) or not folder.is_dir():
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in {card.source.bundled}, but {folder} is not a folder on disk; "
            f"reinstall the package {package!r} (a zipped install cannot be loaded), or pass weights=DIR"
        )
    return folder.resolve()


def _check_revision(card: Card, revision: str) -> str:
    source = card.source
    if not source.revisions or revision in {source.revision, *source.revisions, *source.revision_aliases}:
        return revision
    listed = [source.revision, *source.revision_aliases, *source.revisions]
    nearest = _nearest_steps(revision, source.revisions)
    nearest += [r for r in difflib.get_close_matches(revision, listed, n=5, cutoff=0.6) if r not in nearest]
    hint = f"nearest listed: {', '.join(nearest[:5])}" if nearest else f"listed: {', '.join(listed[:8])} ..."
    raise UnknownRevisionError(
        f"card {card.id} lists no revision {revision!r} of {source.repo} ({hint}); the card lists "
        f"{len(source.revisions)} revisions, see `modeldeck show {card.id}`"
    )


def _nearest_steps(revision: str, revisions: list[str]) -> list[str]:
    """For `stepN`: the listed `stepM` revisions with M numerically closest to N, nearest first."""
    wanted = re.fullmatch(r"step(\d+)", revision)
    if wanted is None:
        return []
    target = int(wanted.group(1))
    steps = [(int(m.group(1)), r) for r in revisions if (m := re.fullmatch(r"step(\d+)", r))]
    return [r for _, r in sorted(steps, key=lambda s: (abs(s[0] - target), s[0]))[:3]]


def _download(card: Card, revision: str, patterns: list[str], progress: bool) -> Path:
    repo, where = card.source.repo, f"{card.source.repo}@{revision}"
    silence = not progress and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns))
    except IncompleteSnapshotError as error:
        raise WeightsNotFoundError(
            f"the cached snapshot of {where} in {constants.HF_HUB_CACHE} is incomplete and the hub cannot be "
            f"reached: {error}; download it again with network access, or pass weights=DIR"
        ) from error
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if constants.HF_HUB_OFFLINE:
            raise WeightsNotFoundError(
                f"{where} (card {card.id}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and offline "
                "mode is on (HF_HUB_OFFLINE=1); download it first (unset HF_HUB_OFFLINE, or run "
                f"`hf download {repo} --revision {revision}`), point HF_HOME/HF_HUB_CACHE at a cache that has it, "
                "or pass weights=DIR"
            ) from error
        raise HubError(
            f"cannot reach the Hugging Face hub for {where} (card {card.id}) and it is not in the cache "
            f"({constants.HF_HUB_CACHE}): {error}; check the network (or HF_ENDPOINT / proxy settings), "
            "or pass weights=DIR"
        ) from error
    except GatedRepoError as error:
        raise HubError(
            f"{repo} (card {card.id}) is gated: accept its terms on https://huggingface.co/{repo} and log in "
            "(`hf auth login` or HF_TOKEN), or pass weights=DIR"
        ) from error
    except RepositoryNotFoundError as error:
        raise HubError(
            f"the hub has no repository {repo} (card {card.id}), or it is private and no valid token was sent; "
            "check source.repo in the card, log in (`hf auth login` or HF_TOKEN), or pass weights=DIR"
        ) from error
    except RevisionNotFoundError as error:
        raise HubError(
            f"{repo} (card {card.id}) has no revision {revision!r} on the hub; check source.revision(s) in the "
            "card or pass another revision="
        ) from error
    except HfHubHTTPError as error:
        raise HubError(f"the Hugging Face hub failed for {where} (card {card.id}): {error}") from error
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise HubError(
            f"network error while downloading {where} (card {card.id}): {type(error).__name__}: {error}; "
            "check the connection (or HF_ENDPOINT / proxy settings) and retry, or pass weights=DIR"
        ) from error
    finally:
        if silence:
            enable_progress_bars()


def _is_network_error(error: Exception) -> bool:
    """Connection and timeout errors, including the HTTP client's own (httpx, requests), which are not all OSError."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return any(
        cls.__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"} for cls in type(error).__mro__
    )


def _check_folder(folder: Path, card: Card, allow_pickle: bool, what: str) -> Path:
    names = sorted(p.name for p in folder.iterdir())
    weights = [n for n in names if fnmatch.fnmatch(n, "*.safetensors")]
    pickles = [n for n in names if fnmatch.fnmatch(n, "pytorch_model*.bin")]
    listing = ", ".join(names) if names else "nothing"
    if "config.json" not in names:
        raise WeightsNotFoundError(
            f"{what} has no config.json (it holds: {listing}); it must hold the {card.id} checkpoint: "
            "config.json, *.safetensors and the tokenizer files"
        )
    if weights or (pickles and allow_pickle):
        return folder
    if pickles:
        raise PickleRefusedError(
            f"{what} holds only pickle checkpoints ({', '.join(pickles)}); loading a pickle can execute arbitrary "
            f"code. Pass allow_pickle=True if you trust them, or run `modeldeck convert {card.id}` to convert "
            "them to safetensors"
        )
    raise WeightsNotFoundError(
        f"{what} has no weights file (*.safetensors{', pytorch_model*.bin' if allow_pickle else ''}); it holds: "
        f"{listing}"
    )
