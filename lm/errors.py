"""Errors a user can fix. The entry points print their message alone, without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message names the problem and the fix."""


class DataError(UserError):
    """The corpus is missing, unreadable, corrupt or unusable."""


class ConfigError(UserError):
    """A configuration value or combination is impossible."""
