"""The ``mirror-unet`` command line: one sub-command per module in ``mirror_unet_hf.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
User mistakes (``UserInputError``) print one line and exit with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from .errors import CONFIG_ERRORS, OneLineArgumentParser, UserInputError, one_line

# File-system refusals the user fixes (name too long, no permission, disk full or read-only, a file where a
# folder is expected): reported like a UserInputError, naming the path.
USER_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
    }
)

# command name -> module under mirror_unet_hf.commands
COMMANDS = {
    "make-phantoms": "make_phantoms",
    "prepare": "prepare",
    "presets": "presets",
    "predict": "predict",
    "evaluate": "evaluate",
    "push": "push",
    "demo": "demo",
    "convert": "convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="mirror-unet",
        description="Mirror U-Net on the Hugging Face stack: presets, data, inference, evaluation, Hub, demo.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of user errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"mirror_unet_hf.commands.{module_name}")
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user passed something wrong' (config validation included)."""
    return (UserInputError, FileNotFoundError, *CONFIG_ERRORS)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except user_error_types() as error:
        if args.debug:
            raise
        print(f"mirror-unet {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except OSError as error:
        if args.debug or error.errno not in USER_ERRNOS:
            raise
        print(f"mirror-unet {args.command}: error: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mirror-unet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
