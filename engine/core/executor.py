"""Where long work runs: in this process (`local`, the default) or on a Ray cluster (`ray`).

`ExecutorConfig` is the one choice every long command offers (`--executor`, `--ray-address`, ...). With
`ray`, the work is cut into shards that stream their items back to this process (the driver), which
writes them where the local path writes them, so no shared filesystem is needed:

    plan = start_ray(config, shards=len(shards))          # connect, check resources: LabError before any work
    run_shards(plan, make_worker, call, shards, on_item)  # one actor per worker, shards rerun when one dies

Fault model: a worker that dies (killed, out of memory, node lost) fails the stream of the shard it was
running; the items that already reached the driver stay written, and the shard goes back to the queue
(the caller's `retry` says what is left of it) for a fresh worker. An error raised by the work itself
(a `LabError` on the worker, a bug) is not retried: it ends the run with its message.

Ray is an optional dependency (`pip install -e .[cluster]`); this module imports it only when asked to.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from engine.core.errors import LabError
from engine.core.options import option

Executor = Literal["local", "ray"]
INSTALL_HINT = "pip install -e .[cluster]"
CONNECT_TIMEOUT_S = 5.0  # a TCP connect to the cluster's address this slow means unreachable (ray.init would hang)
RAY_CURRENT_CLUSTER = "/tmp/ray/ray_current_cluster"  # where `ray start` leaves the address 'auto' joins
MAX_ATTEMPTS = 3  # a shard whose worker died this many times ends the run

T = TypeVar("T")
Progress = Callable[[int, int, str], None]  # (done, total, message)


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """Where a long command's work runs (speed and place only: never part of a run's id)."""

    executor: Executor = option(
        "local", "where the work runs: local = this process; ray = Ray actors on a local instance or a cluster"
    )
    ray_address: str = option(
        "",
        "Ray cluster to join (executor ray): empty = start a local Ray instance; auto = the cluster this machine "
        "belongs to (RAY_ADDRESS or `ray start`); HOST:PORT of a head node's GCS, or ray://HOST:10001 (Ray Client)",
    )
    ray_workers: int = option(
        0,
        "Ray workers, each holding one copy of the model (0: one per GPU when workers take GPUs, else one per "
        "--ray-cpus CPUs of the cluster)",
    )
    ray_gpus: float | None = option(
        None, "GPUs per Ray worker (default: 1 when the cluster has GPUs, else 0); a cluster without them is refused"
    )
    ray_cpus: int = option(
        1, "CPUs per Ray worker, and its torch thread count (fixed, so a worker's numbers do not depend on its node)"
    )

    def validate(self) -> None:
        if self.ray_workers < 0:
            raise LabError("--ray-workers must be 0 (automatic) or more.")
        if self.ray_cpus < 1:
            raise LabError("--ray-cpus must be at least 1.")
        if self.ray_gpus is not None and self.ray_gpus < 0:
            raise LabError("--ray-gpus must be 0 or more.")


ENV_EXECUTOR = "LAB_EXECUTOR"  # the server's jobs: local | ray
ENV_SETTINGS = {  # the server's jobs: environment variable -> ExecutorConfig field
    "LAB_RAY_ADDRESS": "ray_address",
    "LAB_RAY_WORKERS": "ray_workers",
    "LAB_RAY_CPUS": "ray_cpus",
    "LAB_RAY_GPUS": "ray_gpus",
}


def server_executor(environ: dict[str, str] | None = None) -> ExecutorConfig:
    """Where the lab server's long jobs run (the page has no executor flags): LAB_EXECUTOR (`local`, the
    default, or `ray`), with LAB_RAY_ADDRESS, LAB_RAY_WORKERS, LAB_RAY_CPUS and LAB_RAY_GPUS as the
    command line's --ray-* flags; read when a job starts. LabError naming the variable for a bad value."""
    environ = os.environ if environ is None else environ
    kind = environ.get(ENV_EXECUTOR, "").strip() or "local"
    if kind not in ("local", "ray"):
        raise LabError(f"{ENV_EXECUTOR}={kind!r} is not an executor: set it to local or ray (docs/cluster.md).")
    values: dict[str, Any] = {"executor": kind}
    for name, field in ENV_SETTINGS.items():
        text = environ.get(name, "").strip()
        if not text:
            continue
        if field == "ray_address":
            values[field] = text
            continue
        try:
            values[field] = float(text) if field == "ray_gpus" else int(text)
        except ValueError as err:
            raise LabError(f"{name}={text!r} is not a number (docs/cluster.md).") from err
    config = ExecutorConfig(**values)
    config.validate()
    return config


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """How many Ray workers run, and what each one reserves (CPUs = its torch threads)."""

    workers: int
    cpus: int
    gpus: float
    address: str

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} Ray worker(s) x ({self.cpus} CPU{gpus}) on {self.address}"


def ray_module():
    """The `ray` package, or a LabError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise LabError(f"The ray executor needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit address ('HOST:PORT' or 'ray://HOST:PORT'); None for '' and 'auto'."""
    if address in ("", "auto"):
        return None
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LabError(f"Ray address '{address}' is not HOST:PORT, ray://HOST:PORT or auto.")
    return host.strip("[]"), int(port)


def _auto_address() -> str:
    """The cluster 'auto' means: RAY_ADDRESS, else the address `ray start` left in its temp folder ('' when none)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        return Path(RAY_CURRENT_CLUSTER).read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """LabError when nothing answers at an explicit address, or at the one 'auto' finds (a TCP connect), so
    a wrong or stale address fails in seconds instead of leaving `ray.init` retrying for minutes."""
    if address == "auto":
        found = _auto_address()
        if not found:
            raise LabError(
                "No Ray cluster on this machine for --ray-address auto (no RAY_ADDRESS, no `ray start`): start one "
                "with `ray start --head`, give its address, or leave --ray-address empty for a local instance."
            )
        if found != "auto":
            check_reachable(found, timeout)
        return
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise LabError(
            f"Cannot reach the Ray cluster at {address} ({err.strerror or err}): start it with `ray start --head` "
            "there, check the address and port, or leave --ray-address empty for a local instance."
        ) from err


def connect(config: ExecutorConfig) -> str:
    """Connect this process to Ray as `config` says and return the cluster's address.

    An explicit address is checked first (LabError when unreachable). A process already connected (a test
    module, a notebook) keeps its connection when `config` names no other cluster. Otherwise '' starts a
    local instance (no dashboard, the CPUs and GPUs Ray detects, workers at this process's priority),
    'auto' joins the cluster of this machine. Every failure is a LabError naming the address.
    """
    config.validate()
    ray = ray_module()
    address = config.ray_address.strip()
    if ray.is_initialized() and address in ("", "auto"):
        return ray.get_runtime_context().gcs_address
    check_reachable(address)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if _same_address(address, current):
            return current
        raise LabError(f"This process is already connected to the Ray cluster at {current}, not {address}.")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # Workers at this process's priority: Ray's default makes them 15 nicer, which on a shared
            # machine hands their cores to everything else (measured ~30% slower generation on a busy 2-core box).
            ray.init(
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                _system_config={"worker_niceness": 0},
            )
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
        where = address or "a new local instance"
        raise LabError(f"Cannot connect to the Ray cluster at {where}: {str(err).splitlines()[0][:200]}") from err
    return ray.get_runtime_context().gcs_address


def _same_address(a: str, b: str) -> bool:
    try:
        return _host_port(a) == _host_port(b)
    except LabError:
        return False


def plan_workers(config: ExecutorConfig, shards: int, resources: dict[str, float], nodes: list[dict]) -> WorkerPlan:
    """The workers to start for `shards` shards on a cluster with these total `resources` and alive `nodes`
    (each a `ray.nodes()` entry); LabError when the cluster cannot hold even one worker.

    GPUs per worker: `ray_gpus`, else 1 when the cluster has GPUs. Workers: `ray_workers`, else as many as
    the cluster holds at once (floor(GPUs / gpus) with GPUs, floor(CPUs / cpus) without), never more than
    there are shards.
    """
    total_gpus = float(resources.get("GPU", 0.0))
    gpus = config.ray_gpus if config.ray_gpus is not None else (1.0 if total_gpus >= 1 else 0.0)
    cpus = config.ray_cpus
    need = {"CPU": float(cpus), **({"GPU": gpus} if gpus else {})}
    if gpus and total_gpus < gpus:
        raise LabError(
            f"The Ray cluster has {total_gpus:g} GPU(s); a worker asks for {gpus:g} (--ray-gpus): add GPU nodes "
            "or run with --ray-gpus 0 on CPUs."
        )
    if float(resources.get("CPU", 0.0)) < cpus:
        raise LabError(
            f"The Ray cluster has {float(resources.get('CPU', 0.0)):g} CPU(s); a worker asks for {cpus} (--ray-cpus)."
        )
    fits = [n for n in nodes if all(float(n.get("Resources", {}).get(k, 0.0)) >= v for k, v in need.items())]
    if nodes and not fits:
        raise LabError(
            f"No node of the Ray cluster has {cpus} CPU(s)"
            + (f" and {gpus:g} GPU(s)" if gpus else "")
            + " free for one worker: lower --ray-cpus / --ray-gpus."
        )
    if config.ray_workers:
        workers = config.ray_workers
        if gpus and workers * gpus > total_gpus:
            raise LabError(
                f"{workers} workers x {gpus:g} GPU need {workers * gpus:g} GPUs; the Ray cluster has {total_gpus:g}."
            )
    elif gpus:
        workers = int(math.floor(total_gpus / gpus + 1e-9))
    else:
        workers = int(float(resources.get("CPU", 0.0)) // cpus)
    return WorkerPlan(max(1, min(workers, shards)), cpus, gpus, "")


def start_ray(config: ExecutorConfig, shards: int) -> WorkerPlan:
    """Connect (`connect`) and plan the workers for `shards` shards (`plan_workers`): every LabError a
    cluster can cause comes from here, before any work starts."""
    address = connect(config)
    ray = ray_module()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    plan = plan_workers(config, max(1, shards), ray.cluster_resources(), nodes)
    return dataclasses.replace(plan, address=address)


# ------------------------------------------------------------------------------------------------
# Shards on a pool of actors


@dataclasses.dataclass
class Shard(Generic[T]):
    """One piece of the work: its key (for messages) and what the worker gets."""

    key: str
    payload: T
    attempts: int = 0


def _is_worker_death(err: BaseException) -> bool:
    """Ray's errors for a worker that is gone (killed, crashed, node lost), as opposed to the work's own error
    (raised by the work, or by the worker's start: a model that does not load would fail again)."""
    ray = ray_module()
    exc = ray.exceptions
    if isinstance(err, exc.RayActorError) and err.actor_init_failed:
        return False
    kinds = tuple(
        getattr(exc, name)
        for name in (
            "RayActorError",
            "ActorDiedError",
            "ActorUnavailableError",
            "WorkerCrashedError",
            "NodeDiedError",
            "ObjectLostError",
            "OwnerDiedError",
        )
        if hasattr(exc, name)
    )
    return isinstance(err, kinds)


def worker_error(err: BaseException, where: str) -> BaseException:
    """The error a worker raised, as this process should see it: a LabError (the worker's own, or a start
    that failed) stays one line, naming `where`; anything else is the worker's exception itself."""
    ray = ray_module()
    if isinstance(err, ray.exceptions.RayActorError) and err.actor_init_failed:
        lines = [line for line in str(err.error_msg).splitlines() if line.strip()]
        kind, _, message = (lines[-1] if lines else "").partition(": ")
        return LabError(f"A Ray worker could not start ({where}): {message if kind.endswith('LabError') else kind}")
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.as_instanceof_cause()
        if isinstance(cause, LabError):
            return LabError(f"On a Ray worker ({where}): {str(err.cause).splitlines()[0]}")
        return cause
    return err


def run_shards(
    plan: WorkerPlan,
    make_worker: Callable[[int], Any],
    call: Callable[[Any, Shard], Any],
    shards: Sequence[Shard],
    on_item: Callable[[Shard, Any], None],
    retry: Callable[[Shard], Any | None],
    *,
    pool: list[Any] | None = None,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    poll_s: float | None = None,
) -> int:
    """Run `shards` on `plan.workers` actors; returns how many shards were rerun after a worker died.

    `make_worker(i)` starts actor i; `call(actor, shard)` returns the ObjectRefGenerator of its items;
    `on_item(shard, item)` takes each item in this process as it arrives. When a worker dies, `retry(shard)`
    gives the payload of what is left of its shard (None: nothing) and a fresh worker takes it; a shard
    whose workers died MAX_ATTEMPTS times ends the run (LabError). `progress(done, total, message)` after
    each shard, counted in shards. `stop()` true ends the loop between items, and also every `poll_s`
    seconds while no item arrives (None: only between items).

    `pool`: idle actors (each loaded once) to use before starting new ones; the actors idle at the end go
    back into it, for the caller's next call and its own cleanup. Without a `pool` the actors idle at the end
    are killed here (a command that keeps no workers leaves nothing running). On an error or KeyboardInterrupt, and for
    the actors still busy when `stop()` ends the loop, every actor is killed on the way out, so an
    interrupted driver leaves nothing running.
    """
    ray = ray_module()
    queue = collections.deque(shards)
    total = len(queue)
    finished = 0
    reruns = 0
    keep = pool is not None
    pool = pool if keep else []
    idle: list[Any] = []
    started: list[Any] = []
    clean = False
    running: dict[Any, tuple[Any, Shard]] = {}

    def fresh_worker() -> Any:
        actor = make_worker(len(started))
        started.append(actor)
        return actor

    try:
        while pool and len(idle) < len(queue):
            idle.append(pool.pop())
            started.append(idle[-1])
        while len(idle) < min(plan.workers, len(queue)):
            idle.append(fresh_worker())
        while queue or running:
            while queue and idle:
                shard = queue.popleft()
                shard.attempts += 1
                actor = idle.pop()
                running[call(actor, shard)] = (actor, shard)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            if not ready and stop is not None and stop():
                queue.clear()
                break
            for stream in ready:
                actor, shard = running[stream]
                try:
                    item = ray.get(next(stream))
                except StopIteration:
                    del running[stream]
                    idle.append(actor)
                    finished += 1
                    if progress is not None:
                        progress(finished, total, f"shard {shard.key} done ({finished}/{total} shards)")
                    continue
                except Exception as err:  # noqa: BLE001 - a dead worker is retried, anything else ends the run
                    del running[stream]
                    if not _is_worker_death(err):
                        raise worker_error(err, f"shard {shard.key}") from err
                    ray.kill(actor)
                    rest = retry(shard)
                    if rest is None:
                        finished += 1
                    elif shard.attempts >= MAX_ATTEMPTS:
                        raise LabError(
                            f"Ray workers died {shard.attempts} times on shard {shard.key} (last: "
                            f"{str(err).splitlines()[0][:160]}); see the Ray logs (/tmp/ray/session_latest/logs)."
                        ) from err
                    else:
                        reruns += 1
                        queue.appendleft(Shard(shard.key, rest, shard.attempts))
                        if progress is not None:
                            progress(finished, total, f"shard {shard.key}: worker lost, rerunning what is left")
                    idle.append(fresh_worker())
                    continue
                on_item(shard, item)
                if stop is not None and stop():
                    queue.clear()
                    break
            if not queue and stop is not None and stop():
                break
        clean = True
        return reruns
    finally:
        if clean and keep:
            pool.extend(idle)
        ended = [a for a, _ in running.values()] + ([] if keep else idle)
        for actor in started if not clean else ended:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already dead or its cluster gone: nothing left to end
                pass
