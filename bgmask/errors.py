"""The library's own errors. Entry points turn any :class:`BgmaskError` into a one-paragraph message and exit code 2."""

from __future__ import annotations


class BgmaskError(Exception):
    """A problem the user can fix (a setting, a path, a file); the message says how."""


class ConfigError(BgmaskError, ValueError):
    """A setting, a combination of settings or a path in a run's configuration is wrong; says how to fix it.

    Settings are named by their command-line flags (``--lr``), which are also their YAML keys and config field names.
    """
