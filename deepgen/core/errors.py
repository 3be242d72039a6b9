"""Errors a user can fix: the entry point prints them as one line and exits with status 2."""


class UserError(Exception):
    """A mistake in the config, the command line or the data location; the message says what to do."""

    exit_status = 2


class ConfigError(UserError):
    """A config variant, field or value that is not allowed."""


class DataError(UserError):
    """Data that is missing, unreadable or not in the expected format."""
