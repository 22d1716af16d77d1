"""The one exception type jaxalign raises for bad input; the CLI prints it as one line."""


class JaxalignError(ValueError):
    """A user-facing error: bad config, missing files, unknown names."""
