"""A stand-in for any old-shopping path the emulator doesn't model: echoes what it received.

Used to prove the edge forwards method, raw path, query, headers and body unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import struct

from aiohttp import web

CALLS = web.AppKey("calls", list)


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    request.app[CALLS].append((request.method, request.raw_path))
    if "slow_ms" in request.query:
        await asyncio.sleep(int(request.query["slow_ms"]) / 1000)
    if "reset" in request.query:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            # SO_LINGER 0 turns close() into a TCP RST: a connection reset, not a clean close.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.close()
        await asyncio.sleep(1)
    status = int(request.query.get("status", "200"))
    if "random_keys" in request.query:
        # A body whose keys never repeat: every shadow diff names new field paths.
        keys = {f"k{secrets.token_hex(6)}": i for i in range(int(request.query["random_keys"]))}
        return web.json_response({"code": 0, "msg": "ok", "data": keys}, status=status)
    if "big" in request.query:
        size = int(request.query["big"])
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp
    payload = {
        "method": request.method,
        "raw_path": request.raw_path,
        "query": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_b64": base64.b64encode(body).decode(),
    }
    resp = web.json_response({"code": 0, "msg": "ok", "data": payload}, status=status)
    resp.headers.add("Set-Cookie", "a=1; Path=/")
    resp.headers.add("Set-Cookie", "b=2; Path=/")
    resp.headers["X-Upstream"] = "echo"
    if "cors" in request.query:
        # Old shopping's own CORS answer: with the edge in CORS mode, the edge's must replace it.
        resp.headers["Access-Control-Allow-Origin"] = request.query["cors"] or "*"
        resp.headers["Access-Control-Expose-Headers"] = "X-Upstream"
    if "hop_header" in request.query:
        # A header this hop alone may see, named in Connection (RFC 9110 §7.6.1): a proxy must drop both.
        name = request.query["hop_header"]
        resp.headers[name] = "for-this-hop-only"
        resp.headers["Connection"] = f"keep-alive, {name}"
    return resp


def create_echo_app() -> web.Application:
    # Bounds far above the edge's, so a test sees what the edge itself lets through.
    app = web.Application(client_max_size=64 * 1024 * 1024, handler_args={"max_field_size": 1024 * 1024, "max_headers": 4096})
    app[CALLS] = []
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
