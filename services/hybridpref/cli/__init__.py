"""The ``hybridpref`` command: ``main`` dispatches; one module per command."""
