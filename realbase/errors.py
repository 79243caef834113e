"""The one-line error family: what a user can get wrong, and any exception said in one line."""


def one_line(e: BaseException, limit: int = 300, *, typed: bool = False, first_line: bool = False) -> str:
    """An exception's message on one line (its type name when it has none), cut to `limit` characters.
    `first_line`: only the message's first line (decoders append stack traces); `typed`: prefixed with the type
    name ("ValueError: ...")."""
    text = str(e).strip()
    if first_line:
        text = text.splitlines()[0] if text else ""
    text = " ".join(text.split())
    if typed and text:
        text = f"{type(e).__name__}: {text}"
    text = text or type(e).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


class UserError(Exception):
    """A mistake the user can make (bad option, missing file). The CLI prints it on one line and exits 2.

    The message is stored with control characters escaped: it often names a file, and a file name can hold
    escape sequences (no byte from a file reaches the terminal as is)."""

    def __init__(self, message: object = "", *args):
        from realbase.text import printable

        super().__init__(printable(message, limit=2000), *args)
