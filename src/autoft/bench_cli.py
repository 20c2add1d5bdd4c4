"""The command line every script under bench/ shares: its options, then run, print the table, keep the JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoft.atomic import atomic_write_text


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the script's docstring as written (how to reproduce, how long)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def bench_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> int:
    """Parse, measure, print the human table and, with ``--json PATH``, write the raw numbers atomically."""
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return 0
