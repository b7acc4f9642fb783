"""The one exception type whose message is meant for the user.

Anything the user can get wrong (a prompt, a path, a setting) is checked where it enters and
raised as `InputError` with the fix in the message. Pages show the message (no traceback) and
probes print it as one line and exit non-zero. Any other exception is a bug.
"""


class InputError(ValueError):
    """Bad input from the user; `str(err)` is one readable sentence saying what to change."""
