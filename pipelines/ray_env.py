"""Connecting to Ray the way Ray's own tools do.

``RAY_ADDRESS`` set (as ``ray job submit`` does for the entrypoint, or by the
user) -> join that cluster. Unset -> start a local one on this machine. The
job code is the same either way.
"""

from __future__ import annotations

import json
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


def worker_env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars this driver adds to its workers' runtime environment.

    The non-secret ``_FORWARDED_ENV`` that are set here, and ``TOKENIZERS_PARALLELISM=false``
    unless set (otherwise every 0.25-CPU preprocessing task tokenizes with one thread per
    core and fights the actors). Under ``ray job submit`` the job's own runtime env already
    applies to every worker and Ray refuses a driver env var that repeats one of its keys,
    so the keys the user set at submission are left to the user; the rest are added, so a
    submitted job's workers see what a local run's workers see. Credentials are never
    included: they reach local workers by inheritance and cluster workers via instance roles.
    """
    environ = os.environ if environ is None else environ
    env_vars = {k: environ[k] for k in _FORWARDED_ENV if k in environ}
    env_vars.setdefault("TOKENIZERS_PARALLELISM", "false")
    if _JOB_RUNTIME_ENV in environ:
        job_env = (json.loads(environ[_JOB_RUNTIME_ENV]).get("runtime_env") or {}).get("env_vars") or {}
        env_vars = {k: v for k, v in env_vars.items() if k not in job_env}
    return env_vars


def init_ray(num_cpus: float | None = None, quiet: bool = True) -> None:
    """Join ``RAY_ADDRESS`` or start a local cluster; a no-op if Ray is up already.

    ``quiet`` (unless ``--verbose``): Ray's INFO logs and the workers' output go to
    Ray's log files, not this console (``pipelines.console.terminal``).
    """
    if ray.is_initialized():
        return
    from pipelines.console.terminal import quiet_ray_logs, verbose

    quiet = quiet and not verbose()
    if quiet:
        quiet_ray_logs()
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": not quiet, "runtime_env": {"env_vars": worker_env_vars()}}
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
