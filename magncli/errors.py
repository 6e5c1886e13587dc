"""User-facing errors.

Anything a user can cause (a bad path, an unreadable image, a wrong option, a missing
checkpoint) raises `MagnError` with a one-line message. The CLI prints that line and
exits non-zero; it never shows a traceback for these. Programming errors stay ordinary
exceptions.
"""


class MagnError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""
