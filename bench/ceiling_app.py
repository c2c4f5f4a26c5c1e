"""The emptiest gateway: aiohttp on uvloop answering the HTTP benchmark's routes with a constant.

`python -m bench.ceiling_app --port P [--acquirer URL]`, run by bench/ceiling.py
as the edge's workers (several share the port with SO_REUSEPORT) and, without
`--acquirer`, as the acquirer. Payment and capture each make one HTTP call to
the acquirer, as the card connector does; nothing else happens anywhere: no
auth, no shard, no ledger, no Ray.
"""

import argparse

import aiohttp
import uvloop
from aiohttp import web

ANSWER = b'{"object":"ok"}'
ACQUIRER_CONNECTIONS = 100


async def constant(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def via_acquirer(request: web.Request) -> web.Response:
    await request.read()
    async with request.app["session"].post(request.app["acquirer"] + "/v1/authorizations", data=ANSWER) as answer:
        await answer.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def open_session(app: web.Application) -> None:
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ACQUIRER_CONNECTIONS))


async def close_session(app: web.Application) -> None:
    await app["session"].close()


def make_app(acquirer: str) -> web.Application:
    app = web.Application()
    app["acquirer"] = acquirer
    app.router.add_post("/v1/orders", constant)
    app.router.add_post("/v1/authorizations", constant)
    if acquirer:
        app.router.add_post("/v1/payments", via_acquirer)
        app.router.add_post("/v1/payments/{id}/capture", via_acquirer)
        app.on_startup.append(open_session)
        app.on_cleanup.append(close_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--acquirer", default="", help="the acquirer's base URL (none: be the acquirer)")
    args = parser.parse_args()
    uvloop.install()
    web.run_app(make_app(args.acquirer), host="127.0.0.1", port=args.port, reuse_port=True, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
