"""The ``torchmali`` command line: ``torchmali bench`` and ``torchmali train TASK``.

Each subcommand lives in its own module under :mod:`torchmali.experiments` and registers itself
through an ``add_parser(subparsers)`` function that sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    from torchmali.experiments import bench, train

    parser = argparse.ArgumentParser(
        prog="torchmali",
        description="Neural ODEs with exact, memory-efficient gradients.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench.add_parser(sub)
    train.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchmali`` console script and of ``python -m torchmali``.

    Returns the subcommand's exit code; 2, with one line on stderr, on a ``ValueError`` (invalid
    options, data or files: every such error names the fix) or an ``OSError`` (a file that
    could not be read or written, e.g. a full disk: the message names it).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except ValueError as exc:
        print(f"torchmali {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"torchmali {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


def _os_error(exc: OSError) -> str:
    """``cannot write OUT/metrics.json: No space left on device`` rather than a traceback."""
    if exc.filename is None:
        return str(exc)
    return f"cannot use {exc.filename}: {exc.strerror or exc}; check the path and free space"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
