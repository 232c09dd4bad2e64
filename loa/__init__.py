"""The ``loa`` command (``loa/cli.py``)."""
