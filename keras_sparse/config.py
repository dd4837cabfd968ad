"""Gin configuration: finding config files and parsing them with bindings into one-line errors."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import gin

from keras_sparse.errors import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


def parse_gin(config_files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses gin files and bindings; includes resolve next to each file and in ``gin_configs/``.

    A file that is not found as given is looked up in ``gin_configs/`` (``rigl.gin`` works from
    any directory). Unknown files, configurables or parameters raise a one-line ``ConfigError``.
    """
    files = [find_config(f) for f in config_files]
    for path in [CONFIG_DIR, *{os.path.dirname(f) for f in files}]:
        gin.add_config_file_search_path(path)
    # gin logs "Path not found" at ERROR for each search path it tries before the one that
    # holds an include; real parse errors still raise.
    root = logging.getLogger()
    root.addFilter(_not_found_filter)
    try:
        gin.parse_config_files_and_bindings(files, list(bindings))
    except (ValueError, SyntaxError, KeyError, IOError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        where = f" ({lines[-1]})" if len(lines) > 1 else ""
        raise ConfigError(f"Bad gin config: {lines[0] if lines else error}{where}: check the name against "
                          "gin_configs/ and the arguments of training, data, model and the algorithm classes."
                          ) from None
    finally:
        root.removeFilter(_not_found_filter)


def find_config(path: str) -> str:
    """``path`` if it is a file, else ``gin_configs/<path>``; a ``ConfigError`` if neither is."""
    for candidate in (path, os.path.join(CONFIG_DIR, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ConfigError(f"Gin config {path!r} not found, here or in {CONFIG_DIR}: pass an existing file, "
                      "e.g. gin_configs/rigl.gin.")


def _not_found_filter(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Path not found")
