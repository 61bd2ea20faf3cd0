"""User-facing errors: one line that says what went wrong and what to do about it."""


class LabError(Exception):
    """An error caused by the user's input or environment, shown as one line in the UI and CLI."""
