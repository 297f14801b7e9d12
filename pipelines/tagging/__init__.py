"""Bulk tagging on Ray Data (``driver.run_tagging``); the stages in the order a row meets them: reader, preprocess, actor, sink, store."""
