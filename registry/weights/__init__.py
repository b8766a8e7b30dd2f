"""A card's weight files, without torch: which files and where they are (`files`), and their pins (`pins`).

    from modeldeck.registry import weights
    folder = weights.resolve_weights(card)             # weights=DIR, the bundled folder, or the hub (downloads)
    weights.require_verified(card, folder)             # every pinned file: sha256 and size

huggingface_hub is imported only when the hub or its cache is needed.
"""

from __future__ import annotations

from modeldeck.registry.weights.files import (
    CONFIGS,
    PICKLE,
    SAFETENSORS,
    HubError,
    NoRepositoryError,
    PickleRefusedError,
    UnknownRevisionError,
    WeightsNotFoundError,
    bundled_folder,
    cached_snapshot,
    check_revision,
    download_plan,
    hub_cache,
    hub_repository,
    local_weights,
    needed_patterns,
    pickle_refusal,
    resolve_weights,
    snapshot,
    weights_folder,
)
from modeldeck.registry.weights.pins import (
    FileCheck,
    NoPinsError,
    Status,
    VerificationError,
    check_file,
    check_files,
    compute_pins,
    fix_hint,
    pinned_revisions,
    pins_yaml,
    require_pins,
    require_verified,
    sha256_file,
    verification_failure,
)

__all__ = [
    "CONFIGS",
    "PICKLE",
    "SAFETENSORS",
    "FileCheck",
    "HubError",
    "NoPinsError",
    "NoRepositoryError",
    "PickleRefusedError",
    "Status",
    "UnknownRevisionError",
    "VerificationError",
    "WeightsNotFoundError",
    "bundled_folder",
    "cached_snapshot",
    "check_file",
    "check_files",
    "check_revision",
    "compute_pins",
    "download_plan",
    "fix_hint",
    "hub_cache",
    "hub_repository",
    "local_weights",
    "needed_patterns",
    "pickle_refusal",
    "pinned_revisions",
    "pins_yaml",
    "require_pins",
    "require_verified",
    "resolve_weights",
    "sha256_file",
    "snapshot",
    "verification_failure",
    "weights_folder",
]
