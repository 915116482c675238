"""Exceptions that map onto the CLI's exit codes (design guide §4)."""


class ConfigError(ValueError):
    """Bad user input: a usage or config problem found before anything is written (exit code 2).

    The message is one line that names the offending key and, where there is a finite set, the valid choices.
    """


class RunFailed(RuntimeError):
    """A run that started and then failed; its summary.json records why (exit code 1)."""


class RunInterrupted(RunFailed):
    """A run stopped by Ctrl-C; its summary.json records "interrupted" and how to resume (exit code 130)."""

    exit_code = 130


class RunBusy(RuntimeError):
    """Another process holds this run's lock right now (raised only when asked not to wait for it)."""
