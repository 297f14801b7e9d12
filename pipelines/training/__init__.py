"""Data-parallel fine-tuning on Ray Train (``driver.run_training``): settings in ``config``, the workers' loop in ``loop``."""
