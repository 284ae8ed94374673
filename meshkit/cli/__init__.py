"""Command-line programs: `meshkit` (main.py: serve, keygen, token) and `omnirctl`."""
