"""Thin entrypoints (``python -m jobs.train`` / ``jobs.tag`` / ``jobs.evaluate``) and their configs."""
