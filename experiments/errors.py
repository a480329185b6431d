"""How an app stops on bad input: :class:`UsageFailure`, one line on stderr, exit status 1."""

from __future__ import annotations


class UsageFailure(SystemExit):
    """Stops the app with one line on stderr and exit status 1."""

    def __init__(self, message: str):
        super().__init__("FATAL " + " ".join(str(message).split()))
