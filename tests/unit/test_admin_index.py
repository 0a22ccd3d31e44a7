"""GET / on an admin port lists what the port serves."""
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.admin_index import add_index


async def test_root_lists_every_endpoint() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", ok)
    app.router.add_post("/_edge/reload", ok)
    add_index(app)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/")
        assert resp.status == 200
        assert (await resp.json()) == {"endpoints": ["GET /metrics", "POST /_edge/reload"]}
