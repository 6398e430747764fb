"""The `sonate` command line: each subcommand imports what it needs only when it runs."""
