"""`omnirelay validate`: check a config file the way `omnirelay run` would load it."""
from __future__ import annotations

import click

from omnirelay.cli.common import indent, plural
from omnirelay.config import ConfigError
from omnirelay.filters import FilterConfigError
from omnirelay.runtime.supervisor import load_checked


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file):
    """Check FILE: schema, references between listeners, routes and clusters, and filters.

    Exits 0 if it is valid, 1 with one line per problem if not."""
    try:
        config = load_checked(file)
    except (ConfigError, FilterConfigError) as e:
        click.echo(f"{file}: invalid config\n{indent(e)}")
        raise SystemExit(1) from None
    spec = config.spec
    click.echo(f"OK: {plural(len(spec.listeners), 'listener')}, "
               f"{plural(len(spec.routes), 'route')}, {plural(len(spec.clusters), 'cluster')} "
               f"(version {config.metadata.version})")
