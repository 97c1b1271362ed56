"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input or environment. The CLI prints the message alone and exits non-zero, without a traceback."""

    exit_code = 2
