"""The `omnirelay` command: run, status, validate, version."""
from __future__ import annotations

import platform

import click

from omnirelay._version import __version__
from omnirelay.cli.run import run
from omnirelay.cli.status import status
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
