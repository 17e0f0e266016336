"""The one exception type a user sees: a single line naming the thing and what to do."""


class EdgeKitError(Exception):
    """An error the user can act on. The CLI prints str(err) on one line and exits non-zero."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages get folded so the CLI contract holds.
        super().__init__(" ".join(str(message).split()))
