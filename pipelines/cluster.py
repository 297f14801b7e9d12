"""Where a job's work runs on the Ray cluster, and whether its storage reaches there.

Ray schedules training workers, tagging actors and Ray Data tasks on any node
with the resources they ask for, and each of them writes files: Ray Train
checkpoints, the tagging job's staged pieces and read reports. A local
path names a different disk on every node, so on a cluster of more than one
node those files scatter: Ray Train V2 fails at the first checkpoint, and the
tagging driver, which commits by listing staging on its own node, never sees
pieces written elsewhere. ``require_reachable`` refuses that before any work,
in one line, unless the user declares the path a shared mount (NFS, EFS,
Lustre: the same files at the same path on every node).

"Other nodes" means nodes that are alive now, or, on an autoscaling cluster
that has only its head up, work that asks for a resource the driver's node
does not have (``--use-gpu`` on a CPU head, a custom node-type resource):
that work can only run on a node the autoscaler has yet to start.
"""

from __future__ import annotations

from pipelines.storage import is_s3


class ClusterStorageError(ValueError):
    """Storage the job's workers cannot reach; reported as one line (``error: ...``)."""


def parse_range(value, flag: str) -> tuple[int, int]:
    """A pool size as ``--actors``/``--replicas`` take it: ``"2"`` -> (2, 2); ``"1-4"`` -> (1, 4)."""
    try:
        parts = [int(p) for p in str(value).replace(",", "-").split("-")]
    except ValueError:
        raise ValueError(f"{flag} must be N or MIN-MAX, got {value!r}") from None
    lo, hi = (parts[0], parts[0]) if len(parts) == 1 else tuple(parts[:2])
    if len(parts) > 2 or lo < 1 or hi < lo:
        raise ValueError(f"{flag} must be N or MIN-MAX with 1 <= MIN <= MAX, got {value!r}")
    return lo, hi


def parse_resources(spec: str | dict | None) -> dict[str, float]:
    """``"gpu_node=1,big_mem=0.5"`` (flag) or ``{"gpu_node": 1}`` (YAML) -> ``{"gpu_node": 1.0, ...}``.

    Custom Ray resources that pin work to nodes declaring them (``ray start
    --resources``, ``resources:`` of a node type in cluster.yaml).
    """
    if not spec:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            name, sep, amount = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"resources must be NAME=AMOUNT[,NAME=AMOUNT...], got {spec!r}")
            items.append((name.strip(), amount.strip()))
    out = {}
    for name, amount in items:
        try:
            value = float(amount)
        except (TypeError, ValueError):
            raise ValueError(f"resource {name!r} needs a number, got {amount!r}") from None
        if value <= 0:
            raise ValueError(f"resource {name!r} must be > 0, got {amount!r}")
        out[str(name)] = value
    return out


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def other_nodes_reason(needs: dict[str, float]) -> str | None:
    """Why work asking for ``needs`` (per worker/actor/task) may run on a node other
    than the driver's; None when it cannot.

    A resource the driver's node does not declare sends the work elsewhere even
    while the cluster has only this node: the autoscaler starts one that has it.
    """
    import ray

    nodes = _alive_nodes()
    if len(nodes) > 1:
        return f"the Ray cluster has {len(nodes)} nodes"
    here = ray.get_runtime_context().get_node_id()
    mine = next((n for n in nodes if n["NodeID"] == here), {"Resources": {}})
    missing = sorted(name for name, amount in needs.items() if amount > 0 and name not in mine["Resources"])
    if missing:
        return f"they need {', '.join(missing)}, which only other nodes have"
    return None


def require_reachable(path: str, *, shared: bool, needs: dict[str, float], describe: str, what: str, fix: str) -> None:
    """Raise ClusterStorageError when ``path`` is node-local and ``what`` may run on other nodes.

    ``s3://`` is reachable everywhere; a local path only when ``shared`` says
    it is a shared mount (the user's word: a mount looks like any folder).
    Call it after connecting to Ray and before any work.
    """
    if is_s3(path) or shared:
        return
    reason = other_nodes_reason(needs)
    if reason:
        raise ClusterStorageError(f"{describe} is on this node's disk, which {what} on other nodes cannot reach ({reason}); {fix}")
