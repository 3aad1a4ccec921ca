"""Errors that the command line reports as one clear line (no traceback)."""


class InputError(Exception):
    """Bad user input: a missing file, a wrong shape, unknown units, a bad option.

    The message must name the file, variable, key or shape at fault; the CLI prints it as
    ``precip-cvae: error: <message>`` and exits with status 2.
    """


class RunFailed(Exception):
    """A run that started on good input and could not finish: training diverged, the device ran out of memory.

    The message must say what to change (a config key, a smaller batch); the CLI prints it as
    ``precip-cvae: error: <message>`` and exits with status 1.
    """
