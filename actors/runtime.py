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

The dashboard (on request) listens on 127.0.0.1 only, and a local start keeps Ray's token authentication on: Ray
reads its token from `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH` names, else `~/.ray/auth_token` (which
Ray writes readable by everyone). Unless one of the first two is set, `start` keeps the token in
`<data>/ray_auth_token`, readable by its owner only, and says how to log in with it. `RAY_AUTH_MODE=disabled` turns
authentication off, deliberately; the description then says so.

A local runtime is one machine's: `start` turns Ray's own multi-node switch off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`,
Ray's own default on macOS and Windows), so its node address is loopback and every server Ray runs (GCS,
raylet, object manager, agents, each worker's and the driver's gRPC server) listens on 127.0.0.1 only. Without it,
Ray 2.60 turns even `--node-ip-address 127.0.0.1` into the host's routable address (`resolve_ip_for_localhost` in
python/ray/_private/services.py) and its gRPC servers bind every interface whenever the node address is not loopback
(`GrpcServer::Run` in src/ray/rpc/grpc_server.cc); no flag, environment variable or system config binds them to
loopback otherwise. Ray reads the switch once, when `ray` is first imported: this module imports ray only in `start`
and `stop`, and `start` warns when a local runtime came up on another address all the same. To spread the actors
over machines, start a cluster with `ray start --head` and join it (`address`).
"""

import ctypes
import logging
import os
import pathlib
import secrets
import signal

import msgspec

NAMESPACE = "paygate"
LOCAL_CPUS = 2
RUNTIME_FILE = "ray.json"
TOKEN_FILE = "ray_auth_token"
# The dashboard and its API run code on request: reachable from this machine only.
DASHBOARD_HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1

# Ray's own environment variables for token authentication.
MODE_VARIABLE = "RAY_AUTH_MODE"
TOKEN_VARIABLE = "RAY_AUTH_TOKEN"
TOKEN_PATH_VARIABLE = "RAY_AUTH_TOKEN_PATH"
# Ray's own multi-node switch (python/ray/_private/ray_constants.py ENABLE_RAY_CLUSTER), read when ray is imported.
CLUSTER_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

log = logging.getLogger("paygate.actors.runtime")


class RuntimeInfo(msgspec.Struct):
    gcs_address: str
    session_dir: str
    dashboard_url: str = ""
    started_here: bool = False
    token_authentication: bool = False
    token_file: str = ""  # where the token is, when a file is named (paygate names one for a local start)
    metrics_url: str = ""  # this node's metrics (Prometheus text), custom ones included


_runtime_file: pathlib.Path | None = None
_info: RuntimeInfo | None = None
# The token file a local start here pointed Ray at: a process keeps the first token it read, so later starts reuse it.
_token_file: pathlib.Path | None = None
_single_machine_set = False  # whether a local start here turned Ray's multi-node switch off (`stop` turns it back)


def start(address: str | None, data: pathlib.Path, object_store_bytes: int = 256 << 20,
          log_to_driver: bool = False, dashboard: bool = False, dashboard_port: int | None = None) -> str:
    """Start a local Ray runtime (address None or "") or connect to the cluster at `address`; describe where it is.

    The object store is capped (Ray's default takes 30% of RAM) and CPUs are few, for a local start only: a
    cluster's own `ray start` decides those, and its dashboard. `dashboard` starts one with a local runtime, on
    `dashboard_port` (None: 8265 or the next free port; 0: any free port). Ray logs only warnings to this process;
    the actors' output stays in the session's log folder (named in the answer) unless `log_to_driver`. Starting
    twice is harmless.
    """
    global _runtime_file, _info
    data = pathlib.Path(data)
    data.mkdir(parents=True, exist_ok=True)
    local = not address
    token_authentication = token_authentication_on(local)
    options: dict = {}
    if local:
        _keep_on_loopback()
        _keep_token_in(data)
        options = {"num_cpus": LOCAL_CPUS, "object_store_memory": object_store_bytes,
                   "include_dashboard": dashboard, "dashboard_host": DASHBOARD_HOST, "dashboard_port": dashboard_port}
    import ray  # here, not at the top: a local start's switch must be set before Ray reads it

    context = ray.init(
        address=address or None,
        namespace=NAMESPACE,
        configure_logging=True,
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        ignore_reinit_error=True,
        **options,
    )
    node_address = context.address_info.get("node_ip_address", "")
    if local and node_address not in LOOPBACK_ADDRESSES:
        log.warning("the local Ray runtime is on %s, not loopback (ray was imported before it started, so %s=0 came "
                    "too late): Ray's own servers listen on every interface", node_address, CLUSTER_VARIABLE)
    metrics_port = context.address_info.get("metrics_export_port")
    info = RuntimeInfo(
        gcs_address=context.address_info.get("gcs_address") or context.address_info.get("address") or "",
        session_dir=context.address_info.get("session_dir") or "",
        dashboard_url=_url(context.dashboard_url),
        started_here=local,
        token_authentication=token_authentication,
        token_file="" if os.environ.get(TOKEN_VARIABLE) else os.environ.get(TOKEN_PATH_VARIABLE, ""),
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if local and metrics_port else "",
    )
    _runtime_file = data / RUNTIME_FILE
    _runtime_file.write_bytes(msgspec.json.encode(info))
    _info = info
    return describe(info)


def token_authentication_on(local: bool) -> bool:
    """Whether Ray will run with token authentication, by the rules Ray documents (docs.ray.io, "Ray token
    authentication", Ray 2.59 on): `RAY_AUTH_MODE` decides when set ("token" or "disabled"); unset, a new local
    runtime turns it on and a cluster joined by its address does not."""
    mode = os.environ.get(MODE_VARIABLE)
    return local if mode is None else mode.lower() == "token"


def _keep_on_loopback() -> None:
    """Turn Ray's multi-node switch off for the local runtime, in this process and every Ray process it starts."""
    global _single_machine_set
    if os.environ.get(CLUSTER_VARIABLE) != "0":
        os.environ[CLUSTER_VARIABLE] = "0"
        _single_machine_set = True


def _keep_token_in(data: pathlib.Path) -> None:
    """Point Ray at `<data>/ray_auth_token` (created owner-only), unless authentication is off or a token is named."""
    global _token_file
    if not token_authentication_on(local=True):
        return
    if os.environ.get(TOKEN_VARIABLE) or os.environ.get(TOKEN_PATH_VARIABLE):
        return
    if _token_file is None:
        _token_file = (data / TOKEN_FILE).resolve()
        try:
            descriptor = os.open(_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
    # Read by ray.init here and inherited by every Ray process it starts; `stop` takes it back.
    os.environ[TOKEN_PATH_VARIABLE] = str(_token_file)


def die_with_parent() -> None:
    """Call in an actor: when its raylet dies first (a whole process group stopped at once), the kernel ends this
    process too, rather than leave an orphan that holds its ports (Linux's parent-death signal)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent went before the signal was armed
        os._exit(0)


def describe(info: RuntimeInfo) -> str:
    """Where the runtime is and, with a dashboard, how to reach it and log in: lines for a person to read."""
    where = "local Ray runtime" if info.started_here else "Ray cluster"
    lines = [f"{where} at {info.gcs_address} (namespace {NAMESPACE}), logs in {info.session_dir}/logs"]
    if info.started_here:
        lines.append(f"Ray listens on loopback only: another process joins it with {CLUSTER_VARIABLE}=0 set, "
                     "as its own workers have it")
    if info.dashboard_url:
        lines.append(f"Ray dashboard: {info.dashboard_url} - {_login(info)}")
    if info.metrics_url:
        lines.append(f"Ray metrics: {info.metrics_url}")
    return "\n".join(lines)


def _login(info: RuntimeInfo) -> str:
    if not info.token_authentication:
        return "no login: Ray's token authentication is off, so whoever reaches it may run code"
    if info.token_file:
        return f"log in with the token in {info.token_file} (cat {info.token_file})"
    if os.environ.get(TOKEN_VARIABLE):
        return f"log in with the token in the environment variable {TOKEN_VARIABLE}"
    return "log in with the token `ray get-auth-token` prints"


def stop() -> None:
    """Disconnect; a runtime this process started stops with it (and its actors tied to this driver)."""
    global _runtime_file, _info, _single_machine_set
    import ray

    _info = None
    if ray.is_initialized():
        ray.shutdown()
    # Processes started from here from now on (a later serve, say) choose their own token and switch.
    if _token_file is not None and os.environ.get(TOKEN_PATH_VARIABLE) == str(_token_file):
        del os.environ[TOKEN_PATH_VARIABLE]
    if _single_machine_set:
        os.environ.pop(CLUSTER_VARIABLE, None)
        _single_machine_set = False
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
