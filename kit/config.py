"""Where the kit keeps its own files on the host.

config_dir(): $EDGEKIT_CONFIG_DIR, else ~/.config/edgekit. Inside it:
  keys/        the signing key pair (edgekit keys init)
  devices.yaml the default inventory
  known_hosts  host keys recorded by `edgekit devices trust`
Tests point EDGEKIT_CONFIG_DIR at a temporary folder; nothing here is global state.
"""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    env = os.environ.get("EDGEKIT_CONFIG_DIR")
    return Path(env) if env else Path.home() / ".config" / "edgekit"


def results_path() -> Path:
    """Default results store: $EDGEKIT_RESULTS, else <config_dir>/results.db."""
    env = os.environ.get("EDGEKIT_RESULTS")
    return Path(env) if env else config_dir() / "results.db"
