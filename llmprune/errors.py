"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class LLMPruneError(Exception):
    """A problem with the user's input or environment, explained in one line."""
