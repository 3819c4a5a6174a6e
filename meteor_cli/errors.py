"""Errors that users can act on, and the exit codes the CLI maps them to.

Every error a user can fix derives from :class:`MeteorError`. It carries a one-line
*what went wrong* (``message``) and, where we know it, *how to fix it* (``hint``). The CLI
prints both as one paragraph on stderr (a traceback only with ``-v``) and exits with the
error's :class:`ExitCode`, so batch scripts can branch on the kind of failure::

    meteor allocate --ranks ranks.json --total 1193 --out allocation.json
    case $? in 0) ;; 3) echo "input missing" ;; 4|5) echo "bad artifact" ;; esac

The table of codes is mirrored in the README ("Exit codes"); a test keeps the two in sync.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of the ``meteor`` CLI. Values are part of the public interface."""

    OK = 0
    #: An unexpected error inside meteor (a bug): please report it with the ``-v`` traceback.
    INTERNAL = 1
    #: Bad command line or option value (unknown device string, missing required option,
    #: conflicting flags), or a subcommand whose stage is not built yet.
    USAGE = 2
    #: An input file or directory does not exist or cannot be read, or an output cannot be
    #: written there (read-only or full disk, a directory or a file in the way).
    NOT_FOUND = 3
    #: An input is malformed or fails validation (bad JSON, wrong schema, wrong field).
    INVALID_INPUT = 4
    #: An artifact was written by a newer meteor (schema version this release cannot read).
    UNSUPPORTED_VERSION = 5
    #: The requested device is not available (no CUDA, torch_npu missing, index out of range).
    DEVICE_UNAVAILABLE = 6
    #: Training stopped because the loss became NaN/inf; the last good checkpoint is kept.
    DIVERGED = 7
    #: Some requests of a streaming command failed (``meteor infer``): each has a line with an
    #: ``error`` field in the output, and the others were answered.
    PARTIAL = 8
    #: Training stopped on SIGTERM (HPC preemption) after saving a checkpoint: resubmit with
    #: ``--resume``. (Same value as BSD's EX_TEMPFAIL: "try again later".)
    PREEMPTED = 75
    #: Interrupted by the user (Ctrl-C).
    INTERRUPTED = 130


class MeteorError(Exception):
    """Base class of errors a user can act on.

    Args:
        message: what went wrong, naming the file, field or option involved.
        hint: how to fix it (a command, a flag, a value), or ``None``.
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nFix: {self.hint}"


class UsageError(MeteorError):
    """A bad option value or combination of options."""

    exit_code = ExitCode.USAGE


class NotBuiltError(UsageError):
    """A subcommand or option whose stage is not implemented yet."""


class InputNotFoundError(MeteorError):
    """An input path does not exist or cannot be read."""

    exit_code = ExitCode.NOT_FOUND


class OutputNotWritableError(MeteorError):
    """An output path cannot be written: read-only or full file system, no permission, a directory
    where a file should go (or a file where a directory should go). Nothing partial is left behind."""

    exit_code = ExitCode.NOT_FOUND


class InvalidInputError(MeteorError):
    """An input exists but its content is wrong (malformed, wrong schema, bad field)."""

    exit_code = ExitCode.INVALID_INPUT


class ConfigError(InvalidInputError):
    """A model/encoder/LLM configuration value is invalid; the message names the field."""


class UnsupportedVersionError(MeteorError):
    """An artifact's schema version is newer than this release can read."""

    exit_code = ExitCode.UNSUPPORTED_VERSION


class DeviceUnavailableError(MeteorError):
    """The requested accelerator is not present or its backend is not installed."""

    exit_code = ExitCode.DEVICE_UNAVAILABLE


class PreemptedError(MeteorError):
    """Work stopped on SIGTERM after saving its state; rerun with ``--resume``."""

    exit_code = ExitCode.PREEMPTED
