"""The one exception type raised for missing, corrupt or badly laid-out data."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(RuntimeError):
    """The data on disk (or the download) is missing, corrupt, or not in the expected layout.

    The message always names the file or folder at fault and says what to do about it
    (where to put the files, or which file/folder to delete before trying again).
    """
