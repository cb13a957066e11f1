"""Errors of the shared core; each carries a short machine-readable `code`."""


class ArchivistError(Exception):
    """Base class for errors raised by the shared core."""

    code = "archivist_error"


class ConfigError(ArchivistError):
    """The configuration file is missing, unreadable or has a bad value."""

    code = "bad_config"


class InvalidRecord(ArchivistError):
    """A record does not follow the record format of the contract."""

    code = "invalid_record"


class HoldError(ArchivistError):
    """A legal hold command cannot be carried out."""

    code = "bad_hold"


class MomentOutOfRange(ArchivistError):
    """A job's `as_of` is so early that a retention period reaches back before year 1."""

    code = "bad_as_of"


class NotInitialised(ArchivistError):
    """The config names an installation that `archivist init` has not created yet."""

    code = "not_initialised"


class ArchiveMissing(ArchivistError):
    """The archive folder holds no archive, yet records were archived (a folder deleted, or
    its volume not mounted): a new, empty one is not made in its place."""

    code = "archive_missing"
