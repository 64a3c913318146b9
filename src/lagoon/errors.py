"""User-facing errors.

A `LagoonError` is a mistake the user can fix (a bad config value, a missing file, a corrupted
shard). The CLI prints its message on one line and exits with `exit_code`, without a traceback.
Internal invariants use `assert`; a failed assert is a bug in lagoon, not in the user's input.
"""

from __future__ import annotations


class LagoonError(Exception):
    """A problem the user can fix; printed as one line by the CLI."""

    exit_code: int = 2


class ConfigError(LagoonError):
    """A configuration value is missing, unknown or out of range.

    `field` is the dotted path of the offending key (e.g. ``model.num_key_value_heads``).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def under(self, prefix: str) -> "ConfigError":
        """The same error with `prefix` prepended to its field path."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return ConfigError(field, self.message)


def check(condition: bool, field: str, message: str) -> None:
    """Raise `ConfigError(field, message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(field, message)
