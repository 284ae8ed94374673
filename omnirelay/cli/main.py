"""The `omnirelay` command: run, status, validate, ext, tap, completion, version."""
from __future__ import annotations

import platform

import click

from omnirelay._version import __version__
from omnirelay.cli.completion import PROG, completion
from omnirelay.cli.ext import ext
from omnirelay.cli.run import run
from omnirelay.cli.status import status
from omnirelay.cli.tap import tap
from omnirelay.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="omnirelay",
                      message="%(prog)s %(version)s")
def cli():
    """OmniRelay: a fast L4/L7 proxy. See docs/cli.md."""


@cli.command()
def version():
    """Print the version of omnirelay and of what it runs on."""
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio; uvloop not installed"
    click.echo(f"omnirelay {__version__} (Python {platform.python_version()}, {loop})")


cli.add_command(run)
cli.add_command(status)
cli.add_command(validate)
cli.add_command(ext)
cli.add_command(completion)
cli.add_command(tap)


def main() -> None:
    # A fixed program name: completion (`_OMNIRELAY_COMPLETE`) and messages read the same
    # whether started as `omnirelay` or `python -m omnirelay.cli.main`.
    try:
        cli(prog_name=PROG)
    except BrokenPipeError:  # `omnirelay status --json | head`: the reader left
        raise SystemExit(0) from None
    except OSError as e:  # a user's file or socket problem: the reason, not a traceback
        click.echo(f"{PROG}: {e.strerror or e}"
                   f"{f': {e.filename}' if e.filename else ''}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
