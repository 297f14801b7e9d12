"""Connecting to Ray the way Ray's own tools do.

``RAY_ADDRESS`` set (as ``ray job submit`` does for the entrypoint, or by the
user) -> join that cluster. Unset -> start a local one on this machine. The
job code is the same either way.
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)

# Variables a worker needs to behave like the driver. Only non-secret ones are
# put in the runtime environment (it is visible in the dashboard); credentials
# reach local workers by inheritance and cluster workers via instance roles.
_FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "TOKENIZERS_PARALLELISM",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


_JOB_RUNTIME_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by the Ray Jobs supervisor for entrypoints


def init_ray(num_cpus: float | None = None, quiet: bool = True) -> None:
    """Join ``RAY_ADDRESS`` or start a local cluster; a no-op if Ray is up already."""
    if ray.is_initialized():
        return
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env_vars.setdefault("TOKENIZERS_PARALLELISM", "false")
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True}
    # Under `ray job submit` the job's runtime env (working_dir, env_vars) already
    # applies to every worker, and Ray refuses a driver runtime env that overlaps it.
    if _JOB_RUNTIME_ENV not in os.environ:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    if quiet:
        kwargs["logging_level"] = logging.WARNING
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner
        # polls: without it a training run logs "State API may be temporarily unavailable"
        # every few seconds, all night. It binds to localhost only.
        ray.init(num_cpus=int(num_cpus) if num_cpus else None, include_dashboard=True, **kwargs)
