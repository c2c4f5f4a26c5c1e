"""The `paygate` command line: serve, replay, verify, promote, and the shard process itself."""

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import os
import pathlib
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse

import pynng
from tqdm import tqdm

from actors.health_report import HEALTH_FOLDER
from actors.risk_table import TABLE_FILE
from actors.mail import parse_smtp_url
from actors.services import PROVIDERS, MailSink, ProviderProcesses, ProviderService, write_secret
from actors.webhooks import DEFAULT_RETRY_SCHEDULE, RetrySchedule
from edge.app import Settings
from actors.merchant_secrets import Secrets
from edge.auth import AdminToken
from edge.folders import DataFolderError, restrict_data_folder, restrict_new_files
from edge.limits import malformed_networks
from edge.rotation import RotationError, rotate_kek
from edge.server import DEMO_MERCHANT_ID, EdgeWorkers, ensure_demo_merchant
from journal import cold, logs
from journal.auth import DEFAULT_GRACE_S, KeyFileError, MessageKey, ensure_key_file, key_path, rotate_key_file
from journal.client import ShardMap, ShardUnavailable
from journal.processes import (InternalAddresses, ShardPlan, ShardProcess, ShardStartFailed, load_or_create_layout,
                               request_once, running_address, running_key)
from journal.recovery import NEVER_COMMITTED, RecoveryReport, load_snapshot, replay, replay_from_scratch
from journal.shard import main as shard_main
from journal.store import CorruptionError, Journal, Snapshots, read_in_child
from journal.supervision import ShardSupervisor
from journal.wire import Promote, ReplyStatus, reply_decoder

MAX_TRUSTED_PROXIES = 100  # each is checked against every request's peer
# What ends serve at start-up with one line, not a traceback: damaged data, a shard that would not start or answer.
SERVE_START_ERRORS = (CorruptionError, ShardStartFailed, ShardUnavailable, TimeoutError, DataFolderError)
STOP_GRACE_S = 2.0  # after a child ended, how long serve waits for a stop signal that may have ended it
SUPERVISION_TICK_S = 0.5  # how often serve looks at its processes
PROMOTE_TIMEOUT_MS = 5000
# Replay or verify of one folder, in a child process; past this it is killed and the folder fails.
READ_TIMEOUT_S = 3600.0
ADMIN_TOKEN_VARIABLE = "PAYGATE_ADMIN_TOKEN"
MAIL_SINK_PORT_OFFSET = 2  # of --base-port: after the two simulated providers
# The simulated providers and the mail sink stand in for the outside world on this machine: loopback, whatever --host.
SIMULATORS_HOST = "127.0.0.1"
# A --host that means every interface, and the loopback address of its family.
WILDCARD_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="paygate", description="paygate: a payment gateway on an in-memory ledger.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the shards and the HTTP edge on one machine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--public-url", type=_public_url, default=None, metavar="URL",
                       help="where merchants and customers reach paygate, in its links, QR codes and events (behind "
                            "a proxy, the proxy's); default http://<host>:<port>, with the machine's name for a host "
                            "of every interface (0.0.0.0, ::)")
    serve.add_argument("--data", default="./data")
    serve.add_argument("--shards", type=int, default=1)
    serve.add_argument("--replica", action="store_true", help="run a hot replica beside each shard")
    serve.add_argument("--async-replication", action="store_true", help="release results before the replica has them")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    serve.add_argument("--base-port", type=int, default=7100,
                       help="first of a block of ports: the simulated providers, then (with --internal-host) "
                            "the shards")
    serve.add_argument("--internal-host", default="",
                       help="shards and replicas listen on TCP at this address (for a replica on another host) "
                            "instead of unix sockets in an owner-only folder; --host is the HTTP edge's alone")
    serve.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local runtime")
    serve.add_argument("--dashboard-port", type=int, default=None,
                       help="the local Ray dashboard's port on 127.0.0.1 (default 8265 or the next free one; 0: any)")
    serve.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                       help="start the local Ray runtime without its dashboard")
    serve.add_argument("--without-actors", dest="actors", action="store_false",
                       help="no Ray, connectors or simulated providers (card payments then fail at once)")
    serve.add_argument("--processing-timeout-s", type=int, default=30,
                       help="a card payment the acquirer leaves unanswered fails after this long")
    serve.add_argument("--authorization-hold-s", type=int, default=7 * 86400,
                       help="an uncaptured authorization is released after this long")
    serve.add_argument("--status-query-margin-s", type=float, default=5.0,
                       help="a card payment still processing is asked about at its acquirer this long before its "
                            "processing timeout (at most a quarter of that timeout)")
    serve.add_argument("--settlement-cutoff-s", type=_at_least(0), default=7200,
                       help="the acquirer's settlement file of a UTC day is fetched and reconciled this long after "
                            "the day ends (the reconciler actor)")
    serve.add_argument("--archive-after-s", type=_at_least(0), default=86_400,
                       help="orders, payments, refunds and invoices that ended this long ago (engine time) leave "
                            "memory for each shard's cold store (0: never)")
    serve.add_argument("--webhook-retry-schedule", type=_retry_schedule, default=DEFAULT_RETRY_SCHEDULE,
                       metavar="SECONDS,...", help="the delays before each retry of a webhook, IPN or e-mail "
                                                   "(±20%% jitter); after the last retry fails the delivery is dead")
    serve.add_argument("--notifier-max-pending", type=_at_least(1), default=20_000, metavar="N",
                       help="pending deliveries the notifier holds in memory; more wait in the engine, in order")
    serve.add_argument("--smtp-url", type=_smtp_url, default=None, metavar="smtp://HOST:PORT",
                       help="send e-mail through this SMTP server (default: a local sink that keeps each message as "
                            "an .eml file under <data>/mail)")
    serve.add_argument("--snapshot-every-batches", type=int, default=20_000)
    serve.add_argument("--snapshot-every-s", type=float, default=600.0)
    serve.add_argument("--prune-journal", action="store_true", help="delete journal entries older than the oldest kept snapshot")
    serve.add_argument("--order-ip-limit", type=_at_least(0), default=10,
                       help="order creations per client IP per window (0: no limit)")
    serve.add_argument("--order-ip-window-s", type=_at_least(1), default=600, help="the per-IP window, in seconds")
    serve.add_argument("--trusted-proxy", dest="trusted_proxies", action="append", default=[], type=_trusted_proxy,
                       metavar="CIDR", help="a proxy's address or network whose X-Forwarded-For names the client "
                                            "(repeatable); from any other peer the header is ignored")
    serve.add_argument("--last-used-every-s", type=_at_least(1), default=60,
                       help="how often each edge worker reports which credential sets were used (their last_used_at)")
    serve.add_argument("--auto-promote-ms", type=int, default=0, help="a replica takes over after this much primary silence (0: only by `paygate promote`)")
    serve.add_argument("--risk-rules", default=None,
                       help="a JSON file of risk velocity limits and amount limits per tier (actors/risk.py RiskRules)")
    serve.add_argument("--production", action="store_true",
                       help="no demo merchant, no test-card exemption, merchant URLs on public hosts only, risk fails "
                            "closed even without the actors; refuses a data folder others can read")
    serve.set_defaults(run=run_serve)

    for name, run, pattern, text in (
            ("replay", replay_folder, "shard-*", "replay a data folder from scratch (read-only) and print its state hash"),
            ("verify", verify_folder, "shard-*",
             "check the hash chain, double entry, and snapshots against replay (read-only)"),
            ("promote", promote_folder, "shard-*-replica",
             "make the replica running on this folder (or every replica of a data folder) the primary; "
             "exits 1 when it is not a running replica, also when it is already the primary")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--data", required=True, help="a shard's folder, or a data folder of shards")
        command.set_defaults(run=lambda args, run=run, pattern=pattern: each_folder(args, run, pattern))

    rotate = commands.add_parser("rotate-kek", help="seal every saved card under a new key-encryption key and "
                                                    "retire the old keys (beside a running serve)")
    rotate.add_argument("--data", required=True, help="the data folder serve runs on")
    rotate.set_defaults(run=rotate_kek_folder)

    internal = commands.add_parser("rotate-internal-key",
                                   help="replace the data folder's internal message key without stopping serve")
    internal.add_argument("--data", required=True, help="the data folder (serve may be running on it)")
    internal.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S,
                          help="how long after the switch the old key is still accepted (default %(default)g s)")
    internal.set_defaults(run=rotate_internal_key)

    shard = commands.add_parser("shard", help="run one shard process (used by serve)")
    shard.add_argument("config")
    shard.set_defaults(run=lambda args: shard_main([args.config]))

    args = parser.parse_args(argv)
    if args.command == "serve" and len(args.trusted_proxies) > MAX_TRUSTED_PROXIES:
        serve.error(f"at most {MAX_TRUSTED_PROXIES} --trusted-proxy values")
    restrict_new_files()  # before any file or child process: both inherit owner-only modes
    logs.configure(os.environ.get("PAYGATE_LOG_LEVEL", "INFO"))
    sys.exit(args.run(args) or 0)


def _at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


def _retry_schedule(text: str) -> str:
    try:
        RetrySchedule.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _smtp_url(text: str) -> str:
    try:
        parse_smtp_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _public_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.query or parts.fragment):
        raise argparse.ArgumentTypeError(f"not an http(s) URL of a host, without query or credentials: {text!r}")
    return text.rstrip("/")


def public_url_of(host: str, port: int, configured: str | None = None) -> str:
    """The URL merchants and customers are given: the configured one, else the listening address, named by the
    machine's name when that is every interface (a wildcard is no address to give anyone)."""
    if configured:
        return configured
    return f"http://{_url_host(socket.gethostname() if host in WILDCARD_LOOPBACK else host)}:{port}"


def local_url_of(host: str, port: int) -> str:
    """Where this machine reaches the HTTP edge (the simulated providers' callbacks): loopback for a wildcard."""
    return f"http://{_url_host(WILDCARD_LOOPBACK.get(host, host))}:{port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _trusted_proxy(text: str) -> str:
    """A --trusted-proxy value, checked as the edge will read it (edge/limits.py), so none is dropped unseen."""
    if malformed_networks([text]):
        raise argparse.ArgumentTypeError(f"not an IP address or network: {text!r}")
    return text


def run_serve(args) -> int:
    try:
        return _serve(args)
    except SERVE_START_ERRORS as error:  # everything started is stopped by now
        print(f"paygate serve: {error}", file=sys.stderr, flush=True)
        return 1


def exposed_path(data: pathlib.Path) -> str:
    """The first file or folder of the data folder (itself included) that anyone but its owner may use, as
    `path (mode 0644)`; '' when there is none. Other kinds (sockets) sit in folders checked here."""
    if not data.exists():
        return ""
    for folder, _, files in os.walk(data):
        for path in (pathlib.Path(folder), *(pathlib.Path(folder, name) for name in files)):
            status = path.lstat()
            if stat.S_ISLNK(status.st_mode) or not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode)):
                continue
            if status.st_mode & 0o077:
                return f"{path} (mode {stat.S_IMODE(status.st_mode):04o})"
    return ""


def _serve(args) -> int:
    data = pathlib.Path(args.data)
    if args.production and (exposed := exposed_path(data)):
        print(f"paygate serve --production: {exposed} is open to other users than its owner; "
              f"chmod -R go-rwx {data}", file=sys.stderr, flush=True)
        return 1
    restrict_data_folder(data)  # also what an older version left readable by others
    layout = load_or_create_layout(data, args.shards, args.replica)
    ensure_key_file(key_path(data))
    # The card connector takes card numbers: it stays on a unix socket only this user can reach, whatever the shards.
    local = InternalAddresses.in_data_folder(data)
    internal = InternalAddresses(host=args.internal_host, base_port=args.base_port) if args.internal_host else local
    plan = ShardPlan(data, internal, sync=not args.async_replication, key_file=key_path(data),
                     snapshot_every_batches=args.snapshot_every_batches, snapshot_every_s=args.snapshot_every_s,
                     prune_journal=args.prune_journal, auto_promote_ms=args.auto_promote_ms,
                     archive_after_s=args.archive_after_s)
    configs = [plan.configs(shard, layout.replica) for shard in range(layout.shard_count)]
    # Taken out of the environment: no child process (edge worker, shard, Ray) needs it, only its hash.
    admin_override = os.environ.pop(ADMIN_TOKEN_VARIABLE, "")
    admin, admin_token = AdminToken.load_or_create(data / "admin_token.sha256", admin_override or None)
    public_url = public_url_of(args.host, args.port, args.public_url)
    settings = Settings(
        data=str(data), public_url=public_url, order_ip_limit=args.order_ip_limit,
        order_ip_window_s=args.order_ip_window_s,
        shard_addresses=[[config.client_address for config in (primary, replica) if config] for primary, replica in configs],
        admin_token_hash=admin.token_hash if admin_override else "", processing_timeout_s=args.processing_timeout_s,
        authorization_hold_s=args.authorization_hold_s, trusted_proxies=args.trusted_proxies,
        last_used_every_s=args.last_used_every_s,
        production=args.production,
    )
    if args.production:  # without the risk actor's table, card and wallet payments are refused
        settings.risk_table_path = str(data / "risk" / TABLE_FILE)
    stop = threading.Event()
    _stop_on_signals(stop)
    supervisors: list[ShardSupervisor] = []
    providers = ProviderProcesses(_provider_services(data, args, local_url_of(args.host, args.port))
                                  if args.actors else [])
    # The outside world's mail servers, stood in for by a local sink unless one is named.
    mail_sink = MailSink(SIMULATORS_HOST, args.base_port + MAIL_SINK_PORT_OFFSET, data / "mail")
    mail_description = "not sent (--without-actors)"
    edge = EdgeWorkers(settings, args.host, args.port, args.workers)
    ray_description = "not started (--without-actors)"
    ray_runtime = None
    # Held for as long as serve runs: Ray ends an actor once no handle to it is left.
    actor_handles: list = []
    actor_pids: list[int] = []
    try:
        for shard, (primary, replica) in enumerate(configs):
            started = [ShardProcess(config).start() for config in (replica, primary) if config is not None]
            supervisors.append(ShardSupervisor(shard, plan, layout.replica, [started[-1], *started[:-1]]))
        for supervisor in supervisors:
            for process in supervisor.processes:
                process.wait_ready()
        api_key = "" if args.production else ensure_demo_merchant(
            settings, settings.shard_addresses[ShardMap(len(configs)).shard_for(DEMO_MERCHANT_ID)])
        if args.actors:
            from actors import runtime as ray_runtime

            providers.start()  # they come up while Ray does; the connectors need them
            smtp_url = args.smtp_url or mail_sink.start().url
            mail_description = (f"sent through {smtp_url}" if args.smtp_url else
                                f"kept as .eml files in {mail_sink.folder} (a local SMTP sink at {smtp_url})")
            ray_description = ray_runtime.start(args.ray_address, data, dashboard=args.dashboard,
                                                dashboard_port=args.dashboard_port)
            # Imported once started: Ray reads how a local runtime listens when first imported (actors/runtime.py).
            import ray

            _stop_on_signals(stop)  # ray.init put its own SIGTERM handler (a traceback and exit 1) in ours' place
            providers.wait_ready()
            connector_address = local.address("card-connector", 0)
            settings.smtp_url = smtp_url
            announce_addresses = [primary.announce_address for primary, _ in configs]
            handles, where = _spawn_actors(args, data, settings, connector_address, providers, smtp_url,
                                           announce_addresses)
            actor_handles += handles
            ray_description += where
            actor_pids += ray.get([handle.pid.remote() for handle in actor_handles])
            settings.providers = {"piggybank": connector_address}
            settings.settlement_urls = {"piggybank": providers.services[0].url}
        edge.start().wait_ready()
        _print_welcome(public_url, layout, args.workers, admin_token, api_key, ray_description, mail_description)
        while not stop.wait(SUPERVISION_TICK_S):
            for supervisor in supervisors:
                supervisor.tick()
            if not edge.alive() or not providers.alive() or not mail_sink.alive():
                # A Ctrl-C reaches the whole group at once: a child may end before our own handler has run.
                if stop.wait(STOP_GRACE_S):
                    return 0
                print("an edge worker, a simulated provider or the mail sink stopped; stopping the rest",
                      file=sys.stderr)
                return 1
        return 0
    finally:
        edge.stop()
        actor_handles.clear()
        if ray_runtime is not None:
            ray_runtime.stop()
        # Ray's own processes may take the same Ctrl-C and die first, leaving actors behind: end those by pid.
        for pid in actor_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        providers.stop()
        mail_sink.stop()
        for supervisor in supervisors:
            supervisor.stop()
        local.close()


def _spawn_actors(args, data: pathlib.Path, settings: Settings, connector_address: str,
                  providers: ProviderProcesses, smtp_url: str, announce_addresses: list[str]) -> tuple[list, str]:
    """The actors beside the shards, in the Ray runtime started already: their handles, and where to watch them."""
    from actors import connectors, followers, health, notifier, reconciler, risk

    key_file = str(key_path(data))
    shards = settings.shard_addresses
    rules = risk.load_rules(args.risk_rules)
    spawns = [
        functools.partial(connectors.spawn, "piggybank", providers.services[0].url, connector_address, shards,
                          key_file, authorization_hold_s=args.authorization_hold_s),
        functools.partial(connectors.spawn, "bank", providers.services[1].url, None, shards, key_file),
        functools.partial(followers.spawn, shards, key_file, data / "cursors", list(PROVIDERS),
                          status_query_margin_s=args.status_query_margin_s),
        functools.partial(notifier.spawn, shards, key_file, data, settings.public_url, args.webhook_retry_schedule,
                          smtp_url, production=args.production, max_jobs=args.notifier_max_pending,
                          announce_addresses=announce_addresses),
        functools.partial(health.spawn, shards, key_file, str(data / HEALTH_FOLDER)),
        functools.partial(risk.spawn, shards, key_file, data / "risk", rules),
        functools.partial(reconciler.spawn, shards, key_file, data / "cursors", "piggybank", providers.services[0].url,
                          cutoff_s=args.settlement_cutoff_s),
    ]
    # Side by side: each spawn waits for its actor's worker process, which Ray starts as many at a time as it has CPUs.
    with concurrent.futures.ThreadPoolExecutor(len(spawns), thread_name_prefix="spawn") as pool:
        handles = list(pool.map(lambda spawn: spawn(), spawns))
    settings.risk_table_path = str(data / "risk" / risk.TABLE_FILE)
    settings.risk_test_cards = [] if args.production else rules.test_cards
    return handles, f"\nNotifications: {notifier.WHERE}\nShards' health: {health.WHERE}"


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM both end serve's loop, which then stops everything in order and exits 0."""
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())


def _provider_services(data: pathlib.Path, args, edge_url: str) -> list[ProviderService]:
    """piggybank and the bank on the first ports of the block, calling back at `edge_url`; each signs with its own
    secret."""
    secrets = Secrets.of_data_folder(data)
    services = []
    for offset, name in enumerate(PROVIDERS):
        secret_file = data / "providers" / f"{name}.secret"
        write_secret(secret_file, secrets.provider_secret(name))
        services.append(ProviderService(name, SIMULATORS_HOST, args.base_port + offset,
                                        f"{edge_url}/v1/psp/{name}/webhook", str(secret_file)))
    return services


def _print_welcome(public_url: str, layout, workers: int, admin_token: str | None, api_key: str,
                   ray_description: str, mail_description: str) -> None:
    lines = [
        f"paygate is serving at {public_url} ({layout.shard_count} shard(s){' with replicas' if layout.replica else ''}, "
        f"{workers} edge worker(s)). Ctrl-C stops everything.",
        f"Ray: {ray_description}",
        f"Mail: {mail_description}",
        f"admin token: {admin_token} (shown once; only its hash is kept)" if admin_token else
        "admin token: printed at first start (or set PAYGATE_ADMIN_TOKEN)",
    ]
    if api_key:
        lines += [f"demo merchant {DEMO_MERCHANT_ID}, API key: {api_key}", "try:",
                  f"  curl -s {public_url}/v1/orders -H 'Authorization: Bearer {api_key}' "
                  "-d '{\"name\": \"Coffee\", \"amount\": 1999, \"currency\": \"usd\"}'"]
    else:
        lines += ["no demo merchant (--production); create a merchant with the admin token:", "try:",
                  f"  curl -s {public_url}/v1/merchants -H 'Authorization: Bearer <admin token>' "
                  "-d '{\"name\": \"Shop\", \"email\": \"owner@example.com\"}'"]
    print("\n".join(lines), flush=True)


def rotate_kek_folder(args) -> int:
    try:
        report = asyncio.run(rotate_kek(pathlib.Path(args.data)))
    except (RotationError, ShardUnavailable, TimeoutError, OSError) as error:
        print(f"paygate rotate-kek: {args.data}: {_describe(error)}", file=sys.stderr, flush=True)
        return 1
    print(f"{args.data}: card key {report.new_key_id} seals every card; resealed={report.resealed} "
          f"retired={','.join(report.retired_key_ids) or 'none'}", flush=True)
    if report.unavailable:
        print(f"{args.data}: {report.unavailable} card(s) were sealed under keys paygate no longer held: they stay "
              "unusable (card_key_unavailable)", flush=True)
    return 0


def rotate_internal_key(args) -> int:
    try:
        switch_at, refused_at = rotate_key_file(key_path(pathlib.Path(args.data)), args.grace_s)
    except KeyFileError as error:
        print(f"paygate rotate-internal-key: {args.data}: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"{args.data}: a new internal key is accepted now and seals from {_clock(switch_at)}; the old key is "
          f"refused from {_clock(refused_at)}", flush=True)
    return 0


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def shard_folders(data: pathlib.Path, pattern: str = "shard-*") -> list[pathlib.Path]:
    """The folder itself if it is a shard's, else the shard folders inside it whose names match `pattern`."""
    if (data / "journal").exists():
        return [data]
    folders = sorted(path for path in data.glob(pattern) if (path / "journal").exists())
    if not folders:
        raise SystemExit(f"paygate: no shard journal ({pattern}) under {data}")
    return folders


class CommandError(Exception):
    """An operator command cannot go on with a folder; the message says why."""


# What ends an operator command on one folder: each is reported in one line, never as a traceback.
FOLDER_ERRORS = (CommandError, CorruptionError, pynng.NNGException, OSError)


def each_folder(args, run, pattern: str) -> int:
    """`run` on every shard folder of --data; a folder that fails is one line on stderr, and the exit code 1."""
    failures = 0
    for folder in shard_folders(pathlib.Path(args.data), pattern):
        try:
            failures += run(folder)
        except FOLDER_ERRORS as error:
            print(f"paygate {args.command}: {folder}: {_describe(error)}", file=sys.stderr, flush=True)
            failures += 1
    return 1 if failures else 0


def _describe(error: Exception) -> str:
    if isinstance(error, pynng.NNGException):
        return f"no shard process answers ({error}): is it running?"
    return str(error)


def replay_folder(folder: pathlib.Path) -> int:
    return read_in_child(folder, READ_TIMEOUT_S, _replay_folder, folder, readonly=True)


def _replay_folder(journal: Journal, folder: pathlib.Path) -> int:
    engine, report = _replay_with_progress(journal, folder.name)
    print(f"{folder}: batches={engine.sequence} accounts={len(engine.ledger.accounts)} "
          f"transfers={len(engine.ledger.transfers)} replayed_transfers={report.replayed_transfers} "
          f"state_hash={engine.state_hash()}")
    return 0


def _replay_with_progress(journal: Journal, label: str, on_archived=lambda archived: None):
    def on_batch(entry, result, archived) -> None:
        progress.update(1)
        on_archived(archived)

    with tqdm(total=journal.head_sequence, desc=label, unit="batch", disable=None) as progress:
        return replay_from_scratch(journal, on_batch=on_batch)


def verify_folder(folder: pathlib.Path) -> int:
    return read_in_child(folder, READ_TIMEOUT_S, _verify_folder, folder, readonly=True)


def _verify_folder(journal: Journal, folder: pathlib.Path) -> int:
    problems = []
    snapshots = Snapshots(folder)
    archived = cold.Expected()
    try:
        engine, _ = _replay_with_progress(journal, folder.name, archived.add)
        engine.verify()
        final_hash = engine.state_hash()
        store = cold.ColdStore(folder, readonly=True)
        try:
            problems += archived.check(store, engine)
        finally:
            store.close()
        for path in snapshots.paths():
            problems += _check_snapshot(journal, snapshots, path, final_hash)
    except (CorruptionError, AssertionError) as error:
        problems.append(str(error))
    for problem in problems:
        print(f"{folder}: FAILED {problem}")
    if not problems:
        print(f"{folder}: ok batches={journal.head_sequence} state_hash={final_hash}")
    return len(problems)


def _check_snapshot(journal: Journal, snapshots: Snapshots, path: pathlib.Path, final_hash: str) -> list[str]:
    """A snapshot plus the journal after it must reach the same state as the replay from scratch."""
    report = RecoveryReport()
    engine, start, previous_hash = load_snapshot(journal, snapshots, report, paths=[path])
    if report.skipped_snapshots:
        # A snapshot of a batch that never committed is a harmless leftover of a crash; any other one skipped (damaged,
        # another journal's, or of entries this journal lost or rewrote) is a failure.
        return [note for note in report.skipped_snapshots if NEVER_COMMITTED not in note]
    replay(engine, journal, start, previous_hash, report)
    if engine.state_hash() != final_hash:
        return [f"snapshot {path.name}: its state plus the journal tail differs from the replay"]
    return []


def promote_folder(folder: pathlib.Path) -> int:
    address, key = _running_address(folder)
    reply = request_once(address, key, Promote(), PROMOTE_TIMEOUT_MS)
    if reply is None:
        raise CommandError(f"no shard process answers at {address} within {PROMOTE_TIMEOUT_MS} ms: is it running?")
    reply = reply_decoder.decode(reply)
    if reply.status != ReplyStatus.OK:
        raise CommandError(reply.message or ReplyStatus.NAMES[reply.status])
    print(f"{folder}: {ReplyStatus.NAMES[reply.status]} epoch={reply.epoch}")
    return 0


def _running_address(folder: pathlib.Path) -> tuple[str, MessageKey]:
    """The address of the shard process running on `folder`, and the message key it takes."""
    try:
        return running_address(folder), running_key(folder)
    except KeyFileError as error:
        raise CommandError(str(error)) from None
    except FileNotFoundError:
        raise CommandError("no shard.json: no shard process has run on this folder") from None
    except (ValueError, KeyError):
        raise CommandError("shard.json is damaged: start the shard again to rewrite it") from None


if __name__ == "__main__":
    main()
