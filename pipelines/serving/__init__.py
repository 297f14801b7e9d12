"""Online tagging on Ray Serve: the predictor of the bulk job behind an HTTP API.

Read in this order: ``config`` (``ServeConfig``, the settings), ``requests`` (JSON in ->
documents, or a 4xx naming the field), ``stats`` (what a replica counts), ``app`` (the
deployment, its FastAPI routes and ``build_app`` for ``serve deploy``). ``jobs.serve``
runs it from the command line.
"""
