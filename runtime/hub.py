"""Where a card's checkpoint lives on disk: an explicit folder, a folder bundled in a package, or the HF hub cache.

`resolve_weights` returns a local folder holding config.json, the weights and the tokenizer files. Downloads go
through `huggingface_hub.snapshot_download`, restricted to the files the card needs, so `HF_HOME`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE=1` and `HF_TOKEN` behave as they do everywhere else in the Hugging Face stack. Progress bars and
resuming are huggingface_hub's too: a dropped connection is resumed mid-file with an HTTP Range request, and a rerun
keeps the files already cached. `modeldeck download` and `runtime.load` both come here.
Which files a card needs, its revisions and its pins live in the torch-free `modeldeck.registry.weights`. Every
failure is a `ModeldeckError` that says what is missing and what to do. No torch here.
"""

from __future__ import annotations

import fnmatch
import os
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
from modeldeck.registry.weights import (
    CONFIGS,
    PICKLE,
    SAFETENSORS,
    UnknownRevisionError,
    WeightsNotFoundError,
    bundled_folder,
    check_revision,
    needed_patterns,
    weights_folder,
)

__all__ = [
    "CONFIGS",
    "PICKLE",
    "SAFETENSORS",
    "HubError",
    "PickleRefusedError",
    "UnknownRevisionError",
    "WeightsNotFoundError",
    "download_plan",
    "pickle_refusal",
    "resolve_weights",
]


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
    force_download: bool = False,
) -> Path:
    """The local folder holding the card's checkpoint (config.json, *.safetensors, tokenizer files).

    `weights=DIR` is used as-is; a card with `source.bundled` uses the folder inside that package; otherwise the
    card's hub repository is downloaded into (or found in) the Hugging Face cache: only the files the card needs
    (`registry.weights.needed_patterns`), pickles only with `allow_pickle`. huggingface_hub skips files already
    cached (`force_download=True` fetches them again) and resumes a dropped connection mid-file. Only `weights=` and bundled
    folders avoid the hub entirely; `HF_HUB_OFFLINE=1` makes the hub path use the cache only.
    """
    if weights is not None:
        folder = weights_folder(card, weights)
        return _check_folder(folder, card, allow_pickle, f"weights folder {folder}")
    if card.source.bundled:
        return _check_folder(bundled_folder(card), card, allow_pickle, f"bundled weights {card.source.bundled}")
    revision, patterns = download_plan(card, revision, allow_pickle)
    folder = _download(card, revision, patterns, progress, force_download)
    return _check_folder(folder, card, allow_pickle, f"{card.source.repo}@{revision} ({folder})")


def download_plan(card: Card, revision: str | None = None, allow_pickle: bool = False) -> tuple[str, list[str]]:
    """The revision and the file patterns a hub download of the card asks for; UnknownRevisionError for a revision
    the card does not list, PickleRefusedError for a pickle-only card without allow_pickle. No hub call."""
    revision = check_revision(card, revision or card.source.revision)
    if card.source.format == "pytorch" and not allow_pickle:
        raise PickleRefusedError(
            f"{card.source.repo} (card {card.id}) only ships pickle checkpoints (pytorch_model.bin); "
            + pickle_refusal(card.id, None, revision)
        )
    return revision, needed_patterns(card, allow_pickle)


def pickle_refusal(card_id: str | None, folder: Path | None, revision: str | None = None) -> str:
    """Why a pickle is refused and the two ways forward: opt in, or convert once to safetensors."""
    reason = (
        "loading a pickle can execute arbitrary code (torch.load unpickles Python objects, and a crafted file runs "
        "code as it is read). Pass allow_pickle=True (--allow-pickle) if you trust it, or convert it once to "
        "safetensors, which holds nothing but tensors: "
    )
    if folder is not None:
        return reason + f"`modeldeck convert {folder} --allow-pickle --out OUT`, then load OUT with weights=OUT"
    rev = f" --revision {revision}" if revision else ""
    return reason + (
        f"`modeldeck download {card_id}{rev} --allow-pickle` (downloading runs nothing), then "
        "`modeldeck convert DIR --allow-pickle --out OUT` on the folder it prints, and load OUT with weights=OUT"
    )


def _download(card: Card, revision: str, patterns: list[str], progress: bool, force_download: bool = False) -> Path:
    repo, where = card.source.repo, f"{card.source.repo}@{revision}"
    silence = not progress and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return Path(
            snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns, force_download=force_download)
        )
    except IncompleteSnapshotError as error:
        raise WeightsNotFoundError(
            f"the cached snapshot of {where} in {constants.HF_HUB_CACHE} is incomplete and the hub cannot be "
            f"reached: {error}; download it again with network access (`modeldeck download {card.id} --revision "
            f"{revision}`), or pass weights=DIR"
        ) from error
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if constants.HF_HUB_OFFLINE:
            raise WeightsNotFoundError(
                f"{where} (card {card.id}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and offline "
                f"mode is on (HF_HUB_OFFLINE=1); download it first (`modeldeck download {card.id} --revision "
                f"{revision}` with HF_HUB_OFFLINE unset), point HF_HOME/HF_HUB_CACHE at a cache that has it, "
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
            f"{what} holds only pickle checkpoints ({', '.join(pickles)}); " + pickle_refusal(card.id, folder)
        )
    raise WeightsNotFoundError(
        f"{what} has no weights file (*.safetensors{', pytorch_model*.bin' if allow_pickle else ''}); it holds: "
        f"{listing}"
    )
