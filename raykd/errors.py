"""User-facing errors: one clear sentence, exit status 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (config, file, name). The CLI prints the message and exits 2."""

    exit_code = 2
