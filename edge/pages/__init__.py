"""The web pages: the hosted payment page (`/pay`), the merchant's dashboard (`/dashboard`) and the operator's admin
(`/admin`).

Rendered on the server (Jinja2, autoescaped), with a little plain JavaScript and CSS from `/static` (no build step,
no inline script: the Content-Security-Policy allows none); live status by server-sent events. The handlers call the
functions the JSON API's handlers call, so a page can do nothing the API would refuse, and refuses what it refuses.
The pages are not API operations: they stay out of /openapi.json.
"""

import pathlib

import aiohttp_jinja2
import jinja2
from aiohttp import web

from edge.pages import admin, dashboard, live, pay
from edge.pages.common import FILTERS
from edge.sessions import SignedOutSessions

FOLDER = pathlib.Path(__file__).parent


def install(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(FOLDER / "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined, filters=FILTERS)
    app.router.add_static("/static/", FOLDER / "static")
    app["signed_out_sessions"] = SignedOutSessions(pathlib.Path(app["settings"].data) / "signed_out_sessions.bin")
    app.on_cleanup.append(_close)
    app.cleanup_ctx.append(live.run_live_status)
    app.on_shutdown.append(live.close_streams)
    pay.add_routes(app)
    dashboard.add_routes(app)
    admin.add_routes(app)


async def _close(app: web.Application) -> None:
    app["signed_out_sessions"].close()
