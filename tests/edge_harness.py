"""A real `paygate serve` for black-box tests: shard processes, edge workers, HTTP on loopback."""

import pathlib
import urllib.error
import urllib.request

import orjson

from bench.server import PaygateServer



class Response:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return orjson.loads(self.body)


class Server(PaygateServer):
    """`paygate serve` in a subprocess; `request` speaks HTTP to it."""

    def __init__(self, data: pathlib.Path, workers: int = 1, extra: tuple[str, ...] = (),
                 environment: dict[str, str] | None = None, actors: bool = False, dashboard: bool = False,
                 shards: int = 1) -> None:
        # Ray, the connector and the simulated providers take seconds and most of a GiB: only when a test pays;
        # the same for the Ray dashboard (a second or two more, and several processes).
        if not actors:
            extra = (*extra, "--without-actors")
        elif not dashboard:
            extra = (*extra, "--no-dashboard")
        super().__init__(data, workers=workers, shards=shards, extra=extra, environment=environment)

    def request(self, method: str, path: str, body=None, key: str | None = None, headers: dict | None = None,
                raw: bytes | None = None) -> Response:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            request.add_header(name, value)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Response(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.headers, error.read())


def assert_ledger_ok(server: Server) -> None:
    """The engine's double-entry check, over HTTP, passes on every shard."""
    response = server.request("GET", "/v1/admin/ledger_check", key=server.admin_token)
    assert response.status == 200, response.body[:300]
    assert response.json()["ok"] is True, response.json()
