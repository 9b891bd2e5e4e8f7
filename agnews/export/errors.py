"""The one error type of ``agnews.export``: what went wrong and what to do, for the person running the export."""

from agnews.errors import AGNewsError


class ExportError(AGNewsError):
    """A run that cannot be exported, a bad option, an unwritable target, or a parity check that failed."""
