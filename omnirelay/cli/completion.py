"""`omnirelay completion SHELL`: print the shell completion script (click's own)."""
from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
PROG = "omnirelay"
COMPLETE_VAR = "_OMNIRELAY_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; add its output to the shell's startup file.

    \b
      bash: omnirelay completion bash > ~/.local/share/bash-completion/completions/omnirelay
      zsh:  omnirelay completion zsh > "${fpath[1]}/_omnirelay"
      fish: omnirelay completion fish > ~/.config/fish/completions/omnirelay.fish"""
    cls = get_completion_class(shell)
    assert cls is not None  # every SHELLS entry is one click knows
    click.echo(cls(ctx.find_root().command, {}, PROG, COMPLETE_VAR).source())
