"""The one error type a user sees.

Anything the user can fix (a malformed data line, an unknown label, a pattern without a mask,
a missing model) raises `UserError` with one line that names what and where. The command line
prints that line and exits with code 2, without a traceback; library users catch it like any
other exception.
"""


class UserError(Exception):
    """A problem with the user's input or configuration, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would hide its cause under the rest.
        super().__init__(" ".join(str(message).split()))
