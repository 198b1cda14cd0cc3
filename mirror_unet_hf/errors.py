"""The one error type for user mistakes (bad file, flag or value).

Entry points catch ``UserInputError`` (and the config's validation errors, ``CONFIG_ERRORS``) and print
the message on one line with exit code 2; any other exception is an internal error and keeps its traceback.
"""

import argparse
import sys

from huggingface_hub.errors import (
    StrictDataclassClassValidationError,
    StrictDataclassFieldValidationError,
)


class UserInputError(ValueError):
    """A mistake in what the user passed: names the file, flag or value and what was expected."""


# What `MirrorUNetConfig(...)` raises for a bad field; the last line of the message names the value.
CONFIG_ERRORS = (StrictDataclassClassValidationError, StrictDataclassFieldValidationError)


def one_line(error: BaseException) -> str:
    """The line of an error message that says what is wrong (config errors put it last)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if isinstance(error, CONFIG_ERRORS):  # "...validator 'validate_config':\n    ValueError: <what is wrong>"
        last = lines[-1]
        kind, _, message = last.partition(": ")
        return message if message and kind.isidentifier() and kind.endswith(("Error", "Exception")) else last
    return lines[0]


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``prog: error: ... (see prog --help)``), exit 2.

    Sub-parsers made with ``add_subparsers().add_parser`` inherit the class, so every sub-command does the same.
    """

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
