"""Errors a user can act on: the CLI prints their message on one line and exits with status 2."""


class LatentlabError(ValueError):
    """Bad input: the message says what is wrong and what is accepted."""


class CheckpointError(LatentlabError):
    """A model folder or weights file that is missing, malformed or does not match its config."""
