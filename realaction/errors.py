class UserError(Exception):
    """A mistake the user can make (bad option, missing file). The CLI prints it on one line and exits 2."""
