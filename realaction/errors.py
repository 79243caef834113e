def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its type name when it has none), cut to `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


class UserError(Exception):
    """A mistake the user can make (bad option, missing file). The CLI prints it on one line and exits 2.

    The message is stored with control characters escaped: it often names a file, and a file name can hold
    escape sequences (no byte from a file reaches the terminal as is)."""

    def __init__(self, message: object = "", *args):
        from realaction.text import printable

        super().__init__(printable(message, limit=2000), *args)
