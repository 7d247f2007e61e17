"""The training program's one error for bad flags or inputs."""


class UsageError(ValueError):
    """Bad flags: reported before any work starts."""
