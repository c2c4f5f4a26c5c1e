"""The Ray runtime the actors live in: start a local one (or join a cluster), say where it is, stop it.

Ray is off the hot path: starting it costs several seconds and several hundred MiB (GCS, raylet, log monitor,
agents, idle workers), so a process starts it once and the edge never waits on it.

A local start reserves only `LOCAL_CPUS` logical CPUs. Ray's CPU count is a scheduling resource, not a limit:
it decides how many idle worker processes Ray pre-starts (about 85 MiB each) and how many CPU-bound tasks it runs
at once. The machine's cores belong first to the shard processes and the edge workers, and the actors here mostly
wait on I/O (they ask for `num_cpus=0`), so a small number keeps Ray from pre-starting, and oversubscribing with,
one worker per core.

`start` also writes `<data>/ray.json` (the GCS address, the session folder, the dashboard URL) so that other
paygate commands can find the runtime and its logs.
"""

import ctypes
import importlib
import logging
import os
import pathlib
import signal

import msgspec
import ray

NAMESPACE = "paygate"
LOCAL_CPUS = 2
RUNTIME_FILE = "ray.json"
PR_SET_PDEATHSIG = 1

log = logging.getLogger("paygate.actors.runtime")


class RuntimeInfo(msgspec.Struct):
    gcs_address: str
    session_dir: str
    dashboard_url: str = ""
    started_here: bool = False


_runtime_file: pathlib.Path | None = None
_info: RuntimeInfo | None = None


def dashboard_available() -> bool:
    """Whether `ray[default]` (what the dashboard needs) is importable: Ray's own list of its dependencies."""
    try:
        importlib.import_module("ray.dashboard.optional_deps")
    except ImportError:
        return False
    return True


def start(address: str | None, data: pathlib.Path, object_store_bytes: int = 256 << 20,
          log_to_driver: bool = False) -> str:
    """Start a local Ray runtime (address None or "") or connect to the cluster at `address`; describe where it is.

    The object store is capped (Ray's default takes 30% of RAM) and CPUs are few, for a local start only: a
    cluster's own `ray start` decides those. Ray logs only warnings to this process; the actors' output stays in
    the session's log folder (named in the answer) unless `log_to_driver`. Starting twice is harmless.
    """
    global _runtime_file, _info
    local = not address
    options: dict = {}
    if local:
        options = {"num_cpus": LOCAL_CPUS, "object_store_memory": object_store_bytes,
                   "include_dashboard": dashboard_available()}
    context = ray.init(
        address=address or None,
        namespace=NAMESPACE,
        configure_logging=True,
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        ignore_reinit_error=True,
        **options,
    )
    info = RuntimeInfo(
        gcs_address=context.address_info.get("gcs_address") or context.address_info.get("address") or "",
        session_dir=context.address_info.get("session_dir") or "",
        dashboard_url=_url(context.dashboard_url),
        started_here=local,
    )
    data = pathlib.Path(data)
    data.mkdir(parents=True, exist_ok=True)
    _runtime_file = data / RUNTIME_FILE
    _runtime_file.write_bytes(msgspec.json.encode(info))
    _info = info
    return describe(info)


def die_with_parent() -> None:
    """Call in an actor: when its raylet dies first (a whole process group stopped at once), the kernel ends this
    process too, rather than leave an orphan that holds its ports (Linux's parent-death signal)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent went before the signal was armed
        os._exit(0)


def describe(info: RuntimeInfo) -> str:
    where = "local Ray runtime" if info.started_here else "Ray cluster"
    text = f"{where} at {info.gcs_address} (namespace {NAMESPACE}), logs in {info.session_dir}/logs"
    if info.dashboard_url:
        text += f", dashboard {info.dashboard_url} (token authentication: log in with the token Ray generated)"
    return text


def stop() -> None:
    """Disconnect; a runtime this process started stops with it (and its actors tied to this driver)."""
    global _runtime_file, _info
    _info = None
    if ray.is_initialized():
        ray.shutdown()
    if _runtime_file is not None:
        _runtime_file.unlink(missing_ok=True)
        _runtime_file = None


def logs_folder() -> pathlib.Path | None:
    """The logs folder of the session this process is connected to (on this machine), or None."""
    if _info is None or not _info.session_dir:
        return None
    return pathlib.Path(_info.session_dir) / "logs"


def read_info(data: pathlib.Path) -> RuntimeInfo | None:
    """What `start` wrote into `data`, if a runtime was started or joined from it and not stopped."""
    path = pathlib.Path(data) / RUNTIME_FILE
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=RuntimeInfo)


def _url(url: str | None) -> str:
    if not url:
        return ""
    return url if "://" in url else f"http://{url}"
