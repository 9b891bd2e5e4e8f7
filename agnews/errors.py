"""Error types with messages meant for the person running the command."""


class AGNewsError(Exception):
    """Base class: a problem the user can fix (bad input, bad config, missing resource)."""


class DataError(AGNewsError):
    """The data source is missing, unreachable or malformed."""


class ModelLoadError(AGNewsError):
    """A model or tokenizer could not be loaded."""


class ConfigError(AGNewsError):
    """A config value is invalid in a way Hydra's composition cannot catch."""
