def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its type name when it has none), cut to `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


class UserError(Exception):
    """A mistake the user can make (bad option, missing file). The CLI prints it on one line and exits 2."""
