"""The ``meteor`` command line: one module per subcommand, each a thin skin over the library."""
