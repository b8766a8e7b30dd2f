"""Where a card's files are, and getting them, without torch: which files, which revision, which folder.

    needed_patterns(card, allow_pickle)      the files a checkpoint consists of (what `modeldeck download` fetches)
    check_revision(card, revision)           a revision the card lists, or UnknownRevisionError naming the nearest
    bundled_folder(card)                     weights shipped inside a Python package (source.bundled)
    local_weights(card, weights, revision)   the folder to verify: weights=DIR, the bundled folder, or the card's
                                             snapshot in the Hugging Face cache (looked up offline)
    resolve_weights(card, ...)               the folder to load: weights=DIR, the bundled folder, or the card's hub
                                             repository downloaded into (or found in) the Hugging Face cache
    download_plan(card, revision, ...)       the revision and file patterns a download asks for, refusals first
    hub_repository(card)                     source.repo, or NoRepositoryError for a card that has none (a local
                                             card whose weights are given with weights=DIR)

Downloads and cache lookups go through `huggingface_hub.snapshot_download` (called in one place, `snapshot`),
restricted to the files the card needs, so `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE=1` and `HF_TOKEN` behave as
everywhere else in the Hugging Face stack. Progress bars and resuming are huggingface_hub's too: a dropped connection
is resumed mid-file with an HTTP Range request, and a rerun keeps the files already cached. huggingface_hub is
imported only when the hub or its cache is needed. Every failure is a `ModeldeckError` that says what is missing and
what to do, with options spelled the caller's way (`diagnostics.spell`).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.resources
import os
import re
from pathlib import Path
from types import ModuleType

from modeldeck.registry.diagnostics import ModeldeckError, spell
from modeldeck.registry.schema import Card

__all__ = [
    "CONFIGS",
    "PICKLE",
    "SAFETENSORS",
    "HubError",
    "NoRepositoryError",
    "PickleRefusedError",
    "UnknownRevisionError",
    "WeightsNotFoundError",
    "bundled_folder",
    "cached_snapshot",
    "check_revision",
    "download_plan",
    "hub_cache",
    "hub_repository",
    "local_weights",
    "needed_patterns",
    "pickle_refusal",
    "resolve_weights",
    "snapshot",
    "weights_folder",
]

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


class NoRepositoryError(WeightsNotFoundError):
    """The card names no hub repository (source.repo) and no weights folder was given."""


def hub_repository(card: Card) -> str:
    """The card's hub repository (source.repo); NoRepositoryError when it has none.

    A local card may leave source.repo out: its weights come from weights=DIR (or a bundled folder), and only what
    needs the hub (downloading, a cache lookup) fails, here, saying how to give them."""
    if card.source.repo is None:
        raise NoRepositoryError(
            f"card {card.id} has no source.repo, so its weights cannot come from the Hugging Face hub or its cache; "
            f"pass {spell('weights', 'DIR')} (a folder with config.json, *.safetensors and the tokenizer files), "
            "or set source.repo in the card"
        )
    return card.source.repo


# --- which files, which revision -------------------------------------------------------------------


def needed_patterns(card: Card, allow_pickle: bool = False) -> list[str]:
    """The files a card's checkpoint consists of, as huggingface_hub allow_patterns: safetensors weights and index,
    config.json, the generation and tokenizer configs, the card's tokenizer files; pickles only with allow_pickle."""
    patterns = [*SAFETENSORS, *CONFIGS, *(f for f in card.tokenizer.files if f not in CONFIGS)]
    return patterns + PICKLE if allow_pickle else patterns


def check_revision(card: Card, revision: str) -> str:
    """`revision` if the card lists it (its own `source.revision`, a listed revision or a revision alias);
    UnknownRevisionError otherwise, naming the nearest listed ones (or saying the card lists none)."""
    source = card.source
    aliases = [*source.revision_aliases, *source.revision_aliases.values()]
    if revision in {source.revision, *source.revisions, *aliases}:
        return revision
    if not source.revisions:
        own = ", ".join(repr(r) for r in dict.fromkeys([source.revision, *aliases]))
        instead = (
            f"its weights ship in {source.bundled}"
            if source.bundled
            else f"to use another revision{_of(source.repo)}, list it in the card's source.revisions"
        )
        raise UnknownRevisionError(
            f"card {card.id} lists no revisions: only its own revision ({own}) can be used, not {revision!r}; "
            f"leave out {spell('revision', revision)} ({instead})"
        )
    listed = [source.revision, *source.revision_aliases, *source.revisions]
    nearest = _nearest_steps(revision, source.revisions)
    nearest += [r for r in difflib.get_close_matches(revision, listed, n=5, cutoff=0.6) if r not in nearest]
    hint = f"nearest listed: {', '.join(nearest[:5])}" if nearest else f"listed: {', '.join(listed[:8])} ..."
    raise UnknownRevisionError(
        f"card {card.id} lists no revision {revision!r}{_of(source.repo)} ({hint}); the card lists "
        f"{len(source.revisions)} revisions, see `modeldeck show {card.id}`"
    )


def _of(repo: str | None) -> str:
    """' of owner/name' naming the repository in a message, or nothing for a card without one."""
    return f" of {repo}" if repo else ""


def _nearest_steps(revision: str, revisions: list[str]) -> list[str]:
    """For `stepN`: the listed `stepM` revisions with M numerically closest to N, nearest first."""
    wanted = re.fullmatch(r"step(\d+)", revision)
    if wanted is None:
        return []
    target = int(wanted.group(1))
    steps = [(int(m.group(1)), r) for r in revisions if (m := re.fullmatch(r"step(\d+)", r))]
    return [r for _, r in sorted(steps, key=lambda s: (abs(s[0] - target), s[0]))[:3]]


# --- folders on disk -------------------------------------------------------------------------------


def bundled_folder(card: Card) -> Path:
    """The folder of weights a package ships (source.bundled = 'package:folder')."""
    package, _, relative = (card.source.bundled or "").partition(":")
    try:
        root = importlib.resources.files(package)
    except (ModuleNotFoundError, TypeError) as error:  # TypeError: a module, not a package (Python 3.10, 3.11)
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in package {package!r}, which is not installed ({error}); "
            f"install the plugin that provides it, or pass {spell('weights', 'DIR')}"
        ) from error
    folder = root.joinpath(*relative.split("/"))
    if not isinstance(folder, Path) or not folder.is_dir():
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in {card.source.bundled}, but {folder} is not a folder on disk; "
            f"reinstall the package {package!r} (a zipped install cannot be loaded), or pass {spell('weights', 'DIR')}"
        )
    resolved = folder.resolve()  # the schema refuses '..' and absolute folders; a link must not leave the package
    if isinstance(root, Path) and not resolved.is_relative_to(root.resolve()):
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in {card.source.bundled}, but {folder} leads to {resolved}, outside "
            f"the package {package!r}; reinstall the package, or pass {spell('weights', 'DIR')}"
        )
    return resolved


def weights_folder(card: Card, weights: str | os.PathLike[str]) -> Path:
    """An explicit weights folder, which must exist."""
    folder = Path(weights).expanduser().resolve()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        fallback = (
            f", or leave it out to use {card.source.repo} from the Hugging Face hub"
            if card.source.repo
            else " (the card has no source.repo: its weights must be given)"
        )
        raise WeightsNotFoundError(
            f"weights folder {folder} {what}; pass {spell('weights', 'DIR')} naming a folder that holds config.json "
            f"and the {card.id} checkpoint{fallback}"
        )
    return folder


def _check_folder(folder: Path, card: Card, allow_pickle: bool, what: str) -> Path:
    """`folder` if it holds config.json and weights (pickles only with allow_pickle)."""
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
            f"{what} holds only pickle checkpoints ({', '.join(pickles)}); " + pickle_refusal(card.id, folder)
        )
    raise WeightsNotFoundError(
        f"{what} has no weights file (*.safetensors{', pytorch_model*.bin' if allow_pickle else ''}); it holds: "
        f"{listing}"
    )


def pickle_refusal(card_id: str | None, folder: Path | None, revision: str | None = None) -> str:
    """Why a pickle is refused and the two ways forward: opt in, or convert once to safetensors."""
    reason = (
        "loading a pickle can execute arbitrary code (torch.load unpickles Python objects, and a crafted file runs "
        f"code as it is read). Pass {spell('allow_pickle')} if you trust it, or convert it once to safetensors, "
        "which holds nothing but tensors: "
    )
    load = f"load OUT with {spell('weights', 'OUT')}"
    if folder is not None:
        return reason + f"`modeldeck convert {folder} --allow-pickle --out OUT`, then {load}"
    rev = f" --revision {revision}" if revision else ""
    return reason + (
        f"`modeldeck download {card_id}{rev} --allow-pickle` (downloading runs nothing), then "
        f"`modeldeck convert DIR --allow-pickle --out OUT` on the folder it prints, and {load}"
    )


# --- the folder to verify, the folder to load ------------------------------------------------------


def local_weights(card: Card, weights: str | os.PathLike[str] | None = None, revision: str | None = None) -> Path:
    """The folder holding the card's files on this machine, with no network access: `weights`, the bundled folder,
    or the card's snapshot (of `revision`, default the card's) in the Hugging Face cache."""
    if weights is not None:
        return weights_folder(card, weights)
    if card.source.bundled:
        return bundled_folder(card)
    return cached_snapshot(card, check_revision(card, revision or card.source.revision))


def cached_snapshot(card: Card, revision: str) -> Path:
    """The card's snapshot folder in the local Hugging Face cache, found without any network access.

    A snapshot huggingface_hub knows to be incomplete is returned too: verification reports the missing files."""
    patterns = needed_patterns(card, allow_pickle=card.source.format == "pytorch")
    return snapshot(card, revision, patterns, local_files_only=True)


def resolve_weights(
    card: Card,
    *,
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    force_download: bool = False,
) -> Path:
    """The local folder holding the card's checkpoint (config.json, *.safetensors, tokenizer files).

    `weights=DIR` is used as-is (`revision` is then not looked at); a card with `source.bundled` uses the folder
    inside that package (a `revision` must still be one the card accepts); otherwise the card's hub repository is
    downloaded into (or found in) the Hugging Face cache: only the files the card needs (`needed_patterns`), pickles
    only with `allow_pickle`. huggingface_hub skips files already cached (`force_download=True` fetches them again)
    and resumes a dropped connection mid-file. Only `weights=` and bundled folders avoid the hub entirely;
    `HF_HUB_OFFLINE=1` makes the hub path use the cache only.
    """
    if weights is not None:
        folder = weights_folder(card, weights)
        return _check_folder(folder, card, allow_pickle, f"weights folder {folder}")
    if card.source.bundled:
        check_revision(card, revision or card.source.revision)
        return _check_folder(bundled_folder(card), card, allow_pickle, f"bundled weights {card.source.bundled}")
    revision, patterns = download_plan(card, revision, allow_pickle)
    folder = snapshot(
        card, revision, patterns, local_files_only=False, progress=progress, force_download=force_download
    )
    return _check_folder(folder, card, allow_pickle, f"{hub_repository(card)}@{revision} ({folder})")


def download_plan(card: Card, revision: str | None = None, allow_pickle: bool = False) -> tuple[str, list[str]]:
    """The revision and the file patterns a hub download of the card asks for; UnknownRevisionError for a revision
    the card does not list, PickleRefusedError for a pickle-only card without allow_pickle, NoRepositoryError for
    a card without source.repo. No hub call."""
    repo = hub_repository(card)
    revision = check_revision(card, revision or card.source.revision)
    if card.source.format == "pytorch" and not allow_pickle:
        raise PickleRefusedError(
            f"{repo} (card {card.id}) only ships pickle checkpoints (pytorch_model.bin); "
            + pickle_refusal(card.id, None, revision)
        )
    return revision, needed_patterns(card, allow_pickle)


# --- the Hugging Face hub and its cache ------------------------------------------------------------


def _hub(card: Card, module: str = "huggingface_hub") -> ModuleType:
    """huggingface_hub (or one of its modules), imported on first need; a clear error when it is not installed."""
    try:
        hub = importlib.import_module(module)
        constants = importlib.import_module("huggingface_hub.constants")
    except ImportError as error:
        named = f"card {card.id}" + (f": {card.source.repo}" if card.source.repo else "")
        raise WeightsNotFoundError(
            f"the Hugging Face hub and its cache ({named}) need huggingface_hub "
            f"({error}); install it (pip install huggingface_hub, or the runtime extra: pip install "
            f"'modeldeck[runtime]'), or pass {spell('weights', 'DIR')}"
        ) from error
    for variable, folder in (("HF_HOME", constants.HF_HOME), ("HF_HUB_CACHE", constants.HF_HUB_CACHE)):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise HubError(
                f"{variable} is {folder}, which is not a folder (card {card.id} needs the Hugging Face cache); "
                f"point {variable} at a folder, or unset it"
            )
    return hub


def hub_cache(card: Card) -> tuple[str, bool]:
    """Where the Hugging Face cache is (HF_HOME / HF_HUB_CACHE), and whether offline mode (HF_HUB_OFFLINE) is on."""
    constants = _hub(card, "huggingface_hub.constants")
    return str(constants.HF_HUB_CACHE), bool(constants.HF_HUB_OFFLINE)


def snapshot(
    card: Card,
    revision: str,
    patterns: list[str],
    *,
    local_files_only: bool,
    progress: bool = True,
    force_download: bool = False,
) -> Path:
    """The card's snapshot of `revision` in the Hugging Face cache: modeldeck's one call of snapshot_download.

    `local_files_only=True` looks in the cache only, with no network, and returns a snapshot the cache knows to be
    incomplete as it is (verification names the missing files); otherwise what is not cached is downloaded (with
    HF_HUB_OFFLINE=1: the cache only, and an incomplete snapshot is an error). NoRepositoryError for a card without
    source.repo."""
    repo = hub_repository(card)
    hub = _hub(card)
    bars = _hub(card, "huggingface_hub.utils.tqdm")
    silence = not progress and not bars.are_progress_bars_disabled()
    if silence:
        bars.disable_progress_bars()
    try:
        return Path(
            hub.snapshot_download(
                repo_id=repo,
                revision=revision,
                allow_patterns=patterns,
                local_files_only=local_files_only,
                force_download=force_download,
            )
        )
    except Exception as error:
        incomplete = _incomplete_snapshot(card, error)
        if local_files_only and incomplete is not None:
            return incomplete
        mapped = _hub_error(card, revision, error, local_files_only)
        if mapped is None:
            raise
        raise mapped from error
    finally:
        if silence:
            bars.enable_progress_bars()


def _incomplete_snapshot(card: Card, error: Exception) -> Path | None:
    """The folder of a snapshot the cache knows to be incomplete (IncompleteSnapshotError, huggingface_hub 1.x)."""
    errors = _hub(card, "huggingface_hub.errors")
    folder = getattr(error, "snapshot_path", None) if isinstance(error, errors.LocalEntryNotFoundError) else None
    return Path(folder) if folder else None


def _hub_error(card: Card, revision: str, error: Exception, local_files_only: bool) -> ModeldeckError | None:
    """What snapshot_download's failure means for the user, and what to do; None for anything else (a bug)."""
    errors, constants = _hub(card, "huggingface_hub.errors"), _hub(card, "huggingface_hub.constants")
    repo = hub_repository(card)
    where, cache = f"{repo}@{revision}", constants.HF_HUB_CACHE
    weights, download = spell("weights", "DIR"), f"`modeldeck download {card.id} --revision {revision}`"
    elsewhere = "point HF_HOME/HF_HUB_CACHE at a cache that has it"
    if _incomplete_snapshot(card, error) is not None:
        return WeightsNotFoundError(
            f"the cached snapshot of {where} in {cache} is incomplete and the hub cannot be reached: {error}; "
            f"download it again with network access ({download}), or pass {weights}"
        )
    if isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        if local_files_only:
            return WeightsNotFoundError(
                f"{where} (card {card.id}) is not in the Hugging Face cache ({cache}); download it with {download}, "
                f"{elsewhere}, or pass {weights}"
            )
        if constants.HF_HUB_OFFLINE:
            return WeightsNotFoundError(
                f"{where} (card {card.id}) is not in the Hugging Face cache ({cache}) and offline mode is on "
                f"(HF_HUB_OFFLINE=1); download it first ({download} with HF_HUB_OFFLINE unset), {elsewhere}, "
                f"or pass {weights}"
            )
        return HubError(
            f"cannot reach the Hugging Face hub for {where} (card {card.id}) and it is not in the cache ({cache}): "
            f"{error}; check the network (or HF_ENDPOINT / proxy settings), or pass {weights}"
        )
    if isinstance(error, errors.GatedRepoError):
        return HubError(
            f"{repo} (card {card.id}) is gated: accept its terms on https://huggingface.co/{repo} and log in "
            f"(`hf auth login` or HF_TOKEN), or pass {weights}"
        )
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(
            f"the hub has no repository {repo} (card {card.id}), or it is private and no valid token was sent; "
            f"check source.repo in the card, log in (`hf auth login` or HF_TOKEN), or pass {weights}"
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(
            f"{repo} (card {card.id}) has no revision {revision!r} on the hub; check source.revision(s) in the "
            f"card or pass another {spell('revision', 'REVISION')}"
        )
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"the Hugging Face hub failed for {where} (card {card.id}): {error}")
    if _is_network_error(error):
        return HubError(
            f"network error while downloading {where} (card {card.id}): {type(error).__name__}: {error}; "
            f"check the connection (or HF_ENDPOINT / proxy settings) and retry, or pass {weights}"
        )
    return None


def _is_network_error(error: Exception) -> bool:
    """Connection and timeout errors, including the HTTP client's own (httpx, requests), which are not all OSError."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return any(
        cls.__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"} for cls in type(error).__mro__
    )
