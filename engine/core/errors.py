"""User-facing errors: one line that says what went wrong and what to do about it."""


class LabError(Exception):
    """An error caused by the user's input or environment, shown as one line in the UI and CLI."""


class FieldError(LabError):
    """A LabError about one input: `field` names it (a field of the feature's config dataclass), so a form shows
    the message under that field and the command line names the flag."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # pickles with its field (a child process sends errors back)
        return (type(self), (self.field, str(self)))
