"""The root of ppmtrack's errors meant for users.

Every error that a user can fix (a bad input file, a missing model, an unwritable folder, an invalid option)
derives from :class:`PpmtrackError`; the command line turns exactly these into one-line messages and exit
status 2 and lets anything else (a programming error) show its traceback. It lives in ``engine`` because the
engine is the package every other one may import.
"""


class PpmtrackError(Exception):
    """An error meant for the user: its message says what went wrong and what to do."""


class UsageError(PpmtrackError, ValueError):
    """An option or argument that cannot work (an empty selection, an unknown format, options that exclude each
    other). A ``ValueError`` too, so Python callers that catch those keep working."""


class MissingExtraError(PpmtrackError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install 'ppmtrack[...]'`` to run."""
