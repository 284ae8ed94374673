"""`python -m meshkit ...`: the `meshkit` command (serve, keygen, token)."""

from meshkit.cli.main import main

main()
