"""The ``nar`` command line."""
