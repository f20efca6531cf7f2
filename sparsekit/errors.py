"""The one exception type users see: its message is the one-line error the CLI prints."""


class SparsekitError(Exception):
    """A problem with the user's input or environment, described in one line."""


class SparsekitInterrupted(SparsekitError):
    """Ctrl-C during a long job: the job stopped cleanly (nothing partial written)."""

    exit_code = 130

