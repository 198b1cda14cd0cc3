"""The one error type for user mistakes (bad file, flag or value).

Entry points catch ``UserInputError`` and print its message on one line with exit code 2;
any other exception is an internal error and keeps its traceback.
"""


class UserInputError(ValueError):
    """A mistake in what the user passed: names the file, flag or value and what was expected."""
