"""The subcommands of the ``smbdirect`` command, one module each, and what they share."""
