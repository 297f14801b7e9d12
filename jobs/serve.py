"""``python -m jobs.serve`` / ``ray-ner serve --model DIR``: the tagger behind an HTTP API on Ray Serve.

Prints the plan (URL, model, replicas and resources), then one status line (requests/s,
p50/p99 latency, errors) until Ctrl-C or SIGTERM, which shut Serve down. On a cluster
the same application deploys from a Serve config file (``jobs/configs/serve.yaml``).
"""

from __future__ import annotations

import signal
import time

from jobs.cli import ConfigError, config_from_args, run_main
from pipelines.serving.config import ServeConfig


def _interrupt(signum, frame):  # SIGTERM (kill, docker stop): the same clean stop as Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the shutdown short
    raise KeyboardInterrupt


def _deploy_error(exc: BaseException) -> ConfigError:
    """Serve's deploy failure is a replica's whole traceback; the user needs its last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "TagRunError:" in line), lines[-1] if lines else type(exc).__name__)
    return ConfigError(f"the application did not start: {reason}")


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(ServeConfig, argv, "Tag text over HTTP on Ray Serve with a trained tagger (POST /v1/tag).")
    if not cfg.model:
        raise ConfigError("--model is required")
    import ray.serve  # noqa: F401 - its console logger must exist before init_ray quiets it
    from ray import serve

    from jobs.errors import explain
    from pipelines.console.terminal import Stage, echo
    from pipelines.console.jobs import ServingMonitor, ray_logs_hint, serving_plan
    from pipelines.ray_env import init_ray
    from pipelines.serving.app import tagger_app
    from pipelines.tagging.model import check_model

    with explain():
        init_ray()
        model = check_model(cfg.model)
    serving_plan(cfg, model)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ServingMonitor() as monitor:
            starting = Stage("starting replicas (loading the model)", unit=None)
            serve.start(http_options={"host": cfg.host, "port": cfg.port})
            try:
                serve.run(tagger_app(cfg, model, monitor.board), name=cfg.app_name, route_prefix="/")
            except RuntimeError as exc:
                starting.finish(ended="stopped")
                raise _deploy_error(exc) from exc
            starting.finish()
            echo(f"ready: curl -s http://{cfg.host}:{cfg.port}/v1/tag -d '{{\"text\": \"Alice Smith flew to Paris.\"}}'   (Ctrl-C stops; {ray_logs_hint()})")
            monitor.show()
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    echo("stopped: Serve shut down")
    return 0


if __name__ == "__main__":
    run_main(main)
