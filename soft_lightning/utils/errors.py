"""The one exception type users see for bad configuration or input."""


class ConfigError(ValueError):
    """A bad config value or input file; the message names it and says how to fix it."""
