"""Access control, TLS and origins end to end: API keys, session tokens, per-key limits, the metrics key, the
refusal to serve off loopback without keys, HTTPS/WSS with a certificate made here, and CORS — real servers,
real httpx and websockets clients, no mocks."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from aiortc import RTCConfiguration, RTCPeerConnection
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sonate.clients.client import ClientOptions, ClientSession, SonateClient, SonateClientError
from sonate.models.checkpoint import random_model
from sonate.models.errors import SonateInputError
from sonate.streamer.cli.main import main as sonate_main
from sonate.streamer.engine.engine import Engine, EngineConfig
from sonate.streamer.server.auth import ApiKey, RedactTokens, check_exposure, load_keys
from sonate.streamer.server.config import ServerConfig
from sonate.streamer.server.launch import serve_in_background
from tests.conftest import small_config
from tests.test_server import Served, assert_error, next_event, png_bytes, running_server, send, wav_bytes

KEY = "k" * 24
OTHER_KEY = "o" * 24
METRICS_KEY = "m" * 24
ALLOWED = "https://app.example"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def keyed() -> AsyncIterator[Served]:
    keys = (ApiKey(KEY, max_sessions=1, max_voices=1, max_avatars=1), ApiKey(OTHER_KEY))
    with running_server(api_keys=keys, metrics_key=METRICS_KEY) as served:
        yield served


@pytest.fixture
async def http(keyed: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keyed.url, trust_env=False, timeout=10) as client:
        yield client


def assert_unauthorized(response: httpx.Response) -> None:
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


# --- API keys -----------------------------------------------------------------------------------------------------


async def test_the_control_api_needs_a_key_and_health_stays_open(http: httpx.AsyncClient) -> None:
    calls = [
        ("POST", "/v1/sessions", b"{}"),
        ("POST", "/v1/voices", wav_bytes(1.0)),
        ("POST", "/v1/avatars", png_bytes()),
        ("GET", "/v1/voices", None),
        ("GET", "/v1/avatars", None),
        ("DELETE", "/v1/voices/abc", None),
        ("DELETE", "/v1/avatars/abc", None),
    ]
    for method, path, body in calls:
        for headers in ({}, bearer("wrong" * 5), {"Authorization": f"Basic {KEY}"}):
            assert_unauthorized(await http.request(method, path, content=body, headers=headers))
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/v1/voices", headers=bearer(OTHER_KEY))).status_code == 200
    response = await http.post("/v1/sessions", json={}, headers=bearer(KEY))
    assert response.status_code == 201, response.text


async def test_a_session_token_opens_that_session_only(keyed: Served, http: httpx.AsyncClient) -> None:
    mine = (await http.post("/v1/sessions", json={}, headers=bearer(KEY))).json()
    other = (await http.post("/v1/sessions", json={}, headers=bearer(OTHER_KEY))).json()
    assert mine["token"] != other["token"] and len(mine["token"]) >= 40
    assert mine["ws_url"].endswith(f"/v1/sessions/{mine['session_id']}/ws?token={mine['token']}")
    assert mine["whep_url"].endswith(f"/v1/sessions/{mine['session_id']}/whep?token={mine['token']}")
    path = f"/v1/sessions/{mine['session_id']}"
    async with connect(other["ws_url"], proxy=None) as other_ws:
        assert json.loads(await other_ws.recv())["type"] == "session.ready"
        assert (await http.get(path, params={"token": mine["token"]})).status_code == 200
        assert (await http.get(path, headers=bearer(mine["token"]))).status_code == 200
        assert_error(await http.get(path, params={"token": other["token"]}), 403, "forbidden")
        assert_error(await http.delete(path, headers=bearer(other["token"])), 403, "forbidden")
        assert_unauthorized(await http.get(path))
        assert_unauthorized(await http.get(path, params={"token": "x" * 43}))
        assert_unauthorized(await http.post("/v1/sessions", json={}, headers=bearer(mine["token"])))  # not a key
        ws_path = f"{keyed.ws_url}{path}/ws"
        for url, status in ((f"{ws_path}?token={other['token']}", 403), (ws_path, 401)):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(url, proxy=None):
                    pass
            assert caught.value.response.status_code == status
            assert json.loads(caught.value.response.body)["error"]["code"] in ("forbidden", "unauthorized")
        async with connect(mine["ws_url"], proxy=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.ready"
        assert (await http.delete(path, params={"token": mine["token"]})).status_code == 204
        assert_unauthorized(await http.get(path, params={"token": mine["token"]}))  # it ended with its session
        await send(other_ws, type="input.text", text="Still here. ", id="still")  # the refusals left it running
        assert (await next_event(other_ws, "input.accepted"))["id"] == "still"
    assert other["session_id"] in keyed.registry.sessions


async def test_the_whep_routes_take_the_sessions_token(http: httpx.AsyncClient) -> None:
    mine = (await http.post("/v1/sessions", json={}, headers=bearer(KEY))).json()
    other = (await http.post("/v1/sessions", json={}, headers=bearer(OTHER_KEY))).json()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"content": pc.localDescription.sdp, "headers": {"Content-Type": "application/sdp"}}
        whep = f"/v1/sessions/{mine['session_id']}/whep"
        assert_unauthorized(await http.post(whep, **offer))
        assert_error(await http.post(whep, params={"token": other["token"]}, **offer), 403, "forbidden")
        answered = await http.post(mine["whep_url"], **offer)
        assert answered.status_code == 201, answered.text
        location = answered.headers["location"]
        assert location.endswith(f"?token={mine['token']}")  # the viewer's resource keeps the token it was made with
        resource = location.split("?")[0]
        assert_unauthorized(await http.delete(resource))
        assert_error(await http.delete(resource, headers=bearer(other["token"])), 403, "forbidden")
        assert (await http.delete(location)).status_code == 204
    finally:
        await pc.close()


async def test_a_keyless_server_is_open_and_still_hands_out_tokens() -> None:
    with running_server() as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as http:
            created = (await http.post("/v1/sessions", json={})).json()
            assert created["ws_url"].endswith(f"?token={created['token']}")
            assert (await http.get(f"/v1/sessions/{created['session_id']}")).status_code == 200
            assert (await http.get("/v1/voices", headers=bearer("anything" * 3))).status_code == 200


# --- limits and /metrics ------------------------------------------------------------------------------------------


async def test_per_key_limits_answer_429_with_retry_after(http: httpx.AsyncClient) -> None:
    first = await http.post("/v1/sessions", json={}, headers=bearer(KEY))
    assert first.status_code == 201
    refused = await http.post("/v1/sessions", json={}, headers=bearer(KEY))
    assert_error(refused, 429, "limit_reached")
    assert int(refused.headers["retry-after"]) > 0
    assert (await http.post("/v1/sessions", json={}, headers=bearer(OTHER_KEY))).status_code == 201  # its own
    assert (await http.delete(first.headers["location"], headers=bearer(KEY))).status_code == 204
    assert (await http.post("/v1/sessions", json={}, headers=bearer(KEY))).status_code == 201  # one closed
    for kind, body in (("voices", wav_bytes(1.0)), ("avatars", png_bytes())):
        assert (await http.post(f"/v1/{kind}", content=body, headers=bearer(KEY))).status_code == 201
        refused = await http.post(f"/v1/{kind}", content=body, headers=bearer(KEY))
        assert_error(refused, 429, "limit_reached")
        assert "retry-after" in refused.headers
        assert (await http.post(f"/v1/{kind}", content=body, headers=bearer(OTHER_KEY))).status_code == 201


async def test_the_metrics_key_guards_metrics_only(http: httpx.AsyncClient) -> None:
    assert_unauthorized(await http.get("/metrics"))
    assert_unauthorized(await http.get("/metrics", headers=bearer(KEY)))
    assert (await http.get("/metrics", headers=bearer(METRICS_KEY))).status_code == 200
    assert (await http.get("/healthz")).status_code == 200


# --- the Python client and `sonate say` ---------------------------------------------------------------------------


async def test_the_python_client_sends_its_key_and_uses_the_tokenized_urls(keyed: Served) -> None:
    with pytest.raises(SonateClientError) as caught:
        await SonateClient(keyed.url).create_session()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    client = SonateClient(keyed.url, api_key=OTHER_KEY)
    info = await client.create_session()
    assert info.token and info.token in info.ws_url
    async with ClientSession(client, info, ClientOptions(webrtc=False)) as session:
        assert session.ready is not None and session.ready["session_id"] == info.session_id
    await client.delete_session(info.session_id)


def test_say_without_the_servers_key_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SONATE_API_KEY", raising=False)
    with running_server(api_keys=(ApiKey(KEY),)) as served, pytest.raises(SystemExit) as caught:
        sonate_main(["say", "--server", served.url, "Hi", "--out", str(tmp_path / "a.mp4"), "--api-key", "x" * 20])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "401 unauthorized" in err[0], err


# --- keys, files and the refusal to serve off loopback ------------------------------------------------------------


def test_key_files_and_the_environment_give_keys_with_limits(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# operators\n{KEY} sessions=2 voices=0\n\n{OTHER_KEY}  # no limit\n")
    keys = load_keys(path, f" {METRICS_KEY} ,")
    assert [k.secret for k in keys] == [KEY, OTHER_KEY, METRICS_KEY]
    assert (keys[0].max_sessions, keys[0].max_voices, keys[0].max_avatars) == (2, 0, None)
    assert KEY not in repr(keys) and keys[0].id in repr(keys)
    for text, where in (
        ("short\n", "line 1"),
        (f"{KEY}\n{KEY} sessions=x\n", "line 2"),
        (f"{KEY} minutes=3\n", "line 1"),
        (f"{KEY}\n{KEY}\n", "twice"),
        ("# nothing\n", "no key"),
    ):
        path.write_text(text)
        with pytest.raises(SonateInputError, match=where):
            load_keys(path, None)
    with pytest.raises(SonateInputError, match="cannot read"):
        load_keys(tmp_path / "missing", None)
    with pytest.raises(SonateInputError, match="SONATE_API_KEYS, key 2"):
        load_keys(None, f"{KEY},bad key")


def test_only_loopback_is_served_without_keys() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(ServerConfig(host=host))
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(SonateInputError, match="without API keys"):
            check_exposure(ServerConfig(host=host))
        check_exposure(ServerConfig(host=host, api_keys=(ApiKey(KEY),)))
        check_exposure(ServerConfig(host=host, insecure_no_auth=True))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "0.0.0.0"], "without API keys"),
        (["--api-key-file", "{missing}"], "cannot read the key file"),
        (["--api-key-file", "{bad}"], "line 1"),
        (["--ssl-certfile", "{bad}"], "--ssl-keyfile"),
        (["--metrics-key", "short"], "--metrics-key"),
    ],
)
def test_sonate_serve_refuses_bad_access_settings_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SONATE_API_KEYS", raising=False)
    (tmp_path / "bad").write_text("not a key\n")
    paths = {"missing": tmp_path / "missing", "bad": tmp_path / "bad"}
    with pytest.raises(SystemExit) as caught:
        sonate_main(["serve", *(a.format(**paths) for a in args)])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sonate: error: ") and message in err[0], err
    assert KEY not in err[0]


# --- logs, TLS and CORS -------------------------------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_tokens_and_keys_stay_out_of_the_log() -> None:
    engine = Engine(random_model(small_config(n_layers=1)), EngineConfig(max_sessions=1))
    lines = Lines()
    loggers = [logging.getLogger(name) for name in ("sonate", "uvicorn.access", "uvicorn.error")]
    level = loggers[0].level
    with serve_in_background(engine, ServerConfig(api_keys=(ApiKey(KEY),)), log_level="info") as server:
        loggers[0].setLevel(logging.INFO)  # the server's own lines too
        for logger in loggers:
            logger.addHandler(lines)
        try:
            async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
                created = (await http.post("/v1/sessions", json={}, headers=bearer(KEY))).json()
                await http.get(f"/v1/sessions/{created['session_id']}", params={"token": created["token"]})
                async with connect(created["ws_url"], proxy=None) as ws:
                    await ws.recv()
                await http.delete(f"/v1/sessions/{created['session_id']}", headers=bearer(KEY))
        finally:
            for logger in loggers:
                logger.removeHandler(lines)
            loggers[0].setLevel(level)
    assert any("token=…" in line for line in lines.lines), lines.lines  # the URLs were logged, blanked
    assert f"session {created['session_id']} opened with API key {ApiKey(KEY).id}" in lines.lines
    assert not any(created["token"] in line or KEY in line for line in lines.lines), lines.lines
    assert RedactTokens().filter(logging.makeLogRecord({"msg": "%s", "args": ("/ws?token=abc&x=1",)}))


async def test_https_and_wss_with_a_certificate_made_here(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(certfile))
    certificate.private_key_pem.write_to_path(str(keyfile))
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    with running_server(ssl_certfile=certfile, ssl_keyfile=keyfile) as served:
        assert served.url.startswith("https://")
        async with httpx.AsyncClient(base_url=served.url, verify=trusting, trust_env=False, timeout=10) as http:
            created = (await http.post("/v1/sessions", json={})).json()
        assert created["ws_url"].startswith("wss://") and created["whep_url"].startswith("https://")
        async with connect(created["ws_url"], ssl=trusting, proxy=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.ready"
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")  # the certificate is checked: a client not trusting it is refused


async def test_cors_lets_the_configured_origins_in_and_no_others() -> None:
    with running_server(cors_origins=(ALLOWED,)) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as http:
            preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
            allowed = await http.options("/v1/sessions", headers={"Origin": ALLOWED, **preflight})
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == ALLOWED
            assert "POST" in allowed.headers["access-control-allow-methods"]
            assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
            created = await http.post("/v1/sessions", json={}, headers={"Origin": ALLOWED})
            assert created.headers["access-control-allow-origin"] == ALLOWED
            exposed = {h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")}
            assert {"location", "etag", "link", "accept-patch"} <= exposed
            refused = await http.options("/v1/sessions", headers={"Origin": "https://evil.example", **preflight})
            assert "access-control-allow-origin" not in refused.headers
            other = await http.get("/healthz", headers={"Origin": "https://evil.example"})
            assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


@pytest.mark.slow
def test_the_demo_page_takes_a_key_and_watches_with_the_sessions_token(tmp_path: Path) -> None:
    from tests.test_browser import TIMEOUT_MS, demo_page, wait_until

    with running_server(api_keys=(ApiKey(KEY),)) as served, demo_page(served, tmp_path / "profile") as page:
        page.wait_for_selector("#errors .error code:text('unauthorized')")  # no key yet: the lists are refused
        refusals = page.locator("#errors .error").count()
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelector('#voice').options.length > 0")
        assert page.evaluate("sessionStorage.getItem('sonate-api-key')") == KEY
        page.click("#start")
        page.wait_for_function("window.pc && window.pc.connectionState === 'connected'", timeout=TIMEOUT_MS)
        hosted = next(iter(served.registry.sessions.values()))
        assert hosted.webrtc_viewers == 1 and hosted.websockets == 1
        page.wait_for_function("window.sonate.state.polls > 4", timeout=TIMEOUT_MS)  # describe, by its token
        assert page.locator("#errors .error").count() == refusals
        page.click("#leave")
        wait_until(lambda: not served.registry.sessions, what="the session to close")
