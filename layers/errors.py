"""The one exception type for problems a user can fix (bad model, bad input, impossible split)."""


class PisplitError(ValueError):
    """A user-facing error: its message names the thing and the reason, on one line."""
