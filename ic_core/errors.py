"""User-facing errors: each message says what went wrong and what to do about it."""


class ICError(Exception):
    """Base class for errors that the app and CLI show as one clear message."""


class ModelLoadError(ICError):
    """A model could not be found, read or loaded."""


class PromptError(ICError):
    """A prompt, template or read-out position is unusable."""


class DataError(ICError):
    """An uploaded or bundled data file is malformed."""
