"""`vitkit serve` in the face of hostile clients: access token, Host and Origin checks, HTTPS, half-open connections,
images that cost memory or run foreign decoders, abandoned decodes. Each against a real server process."""
import asyncio
import datetime
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.serving import Server, image_bytes, make_checkpoint, serve_command
from tests.test_hardening import _jpeg_with_broken_exif
from tests.serving import browser_or_skip
from vitkit.serve.batcher import DecodePool, QueueFull

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "token-for-tests-0123456789abcdef"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("secure") / "model.safetensors")


@pytest.fixture(scope="module")
def guarded(checkpoint, tmp_path_factory):
    """Loopback, the token from $VITKIT_TOKEN, no overlays, /docs on, a 3 s deadline."""
    log = tmp_path_factory.mktemp("guarded-log") / "server.log"
    srv = Server(serve_command(checkpoint, "--precision", "fp32", "--timeout", "3", "--no-explain", "--docs"), log,
                 env={"VITKIT_TOKEN": TOKEN}, token=TOKEN)
    yield srv
    srv.stop()


def _status(srv: Server, path: str, **headers) -> int:
    return srv.request("GET", path, headers=headers)[0]


def test_the_token_is_asked_for_everywhere_but_health_and_the_page(guarded):
    assert _status(guarded, "/model") == 200
    assert _status(guarded, "/model", Authorization="") == 401
    assert _status(guarded, "/model", Authorization="Bearer " + TOKEN[:-1] + "x") == 401
    assert _status(guarded, "/openapi.json", Authorization="Basic " + TOKEN) == 401
    code, headers, body = guarded.post_files([("a.png", image_bytes(1))], headers={"Authorization": ""})
    assert code == 401 and headers["WWW-Authenticate"] == "Bearer" and "access token" in body["error"]
    assert _status(guarded, "/health", Authorization="") == 200
    assert _status(guarded, "/", Authorization="") == 200
    assert guarded.post_files([("a.png", image_bytes(1))])[0] == 200
    assert TOKEN not in guarded.request("GET", "/model")[2].__repr__()  # never shown back
    assert TOKEN not in guarded.log.read_text()


def test_a_rebound_host_name_and_a_cross_site_post_are_refused(guarded):
    answer = guarded.raw(b"GET /health HTTP/1.1\r\nHost: attacker.example:8000\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 421") and b"--allowed-hosts" in answer
    for host in (f"localhost:{guarded.port}", f"127.0.0.1:{guarded.port}", f"[::1]:{guarded.port}"):
        assert _status(guarded, "/health", Host=host) == 200
    png = [("a.png", image_bytes(1))]
    code, _, body = guarded.post_files(png, headers={"Origin": "http://attacker.example"})
    assert code == 403 and "cross-site" in body["error"]
    assert guarded.post_files(png, headers={"Origin": "null"})[0] == 403
    assert guarded.post_files(png, headers={"Origin": f"http://127.0.0.1:{guarded.port}"})[0] == 200


def test_no_explain_refuses_overlays_and_docs_are_pinned_and_off_by_default(guarded, checkpoint, tmp_path):
    code, _, body = guarded.post_files([("a.png", image_bytes(1))], "?explain=true")
    assert code == 403 and "turned off" in body["error"]
    assert guarded.get("/model")[1]["explain"] is False
    code, page = guarded.get("/docs")
    assert code == 200 and "swagger-ui-dist@5.35.0/swagger-ui-bundle.js" in page
    assert page.count('integrity="sha384-') == 2  # a changed file on the CDN is refused by the browser


def test_the_page_asks_for_the_token_once_and_classifies(guarded, tmp_path):
    webdriver = browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(images):
        path.write_bytes(image_bytes(30 + i))
    driver = webdriver()
    try:
        driver.get(guarded.base + "/")
        prompt = WebDriverWait(driver, 30).until(expected_conditions.alert_is_present())
        assert "access token" in prompt.text
        prompt.send_keys(TOKEN)
        prompt.accept()
        WebDriverWait(driver, 30).until(lambda d: "3 classes" in d.find_element(By.ID, "model-info").text)
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        == "done")
        assert len(driver.find_elements(By.CSS_SELECTOR, '.card[data-state="done"]')) == 2  # no second prompt
        assert not driver.find_elements(By.CSS_SELECTOR, "figure img[alt=attention]")  # --no-explain
    finally:
        driver.quit()


def test_a_server_beyond_loopback_makes_up_a_token_and_speaks_https(checkpoint, tmp_path):
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    log = tmp_path / "server.log"
    srv = Server(serve_command(checkpoint, "--precision", "fp32", "--host", "0.0.0.0", "--ssl-certfile", str(cert),
                               "--ssl-keyfile", str(key)), log, env={"VITKIT_TOKEN": ""}, tls=context)
    try:
        made_up = re.search(r"Bearer ([\w-]{32})'", log.read_text())
        assert made_up, log.read_text()
        assert srv.get("/model")[0] == 401
        srv.token = made_up.group(1)
        assert srv.get("/model")[0] == 200 and srv.post_files([("a.png", image_bytes(1))])[0] == 200
        assert "https://0.0.0.0" in log.read_text()
    finally:
        srv.stop()


def test_contradicting_or_weak_token_settings_are_one_line(checkpoint, tmp_path):
    both = run_cli("serve", checkpoint, "--token", TOKEN, "--no-token")
    assert both.returncode == 2 and both.stderr.strip().count("\n") == 0 and "contradict" in both.stderr
    short = run_cli("serve", checkpoint, "--token", "abc")
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    half = run_cli("serve", checkpoint, "--ssl-certfile", str(tmp_path / "c.pem"))
    assert half.returncode == 2 and "both --ssl-certfile and --ssl-keyfile" in half.stderr


def test_half_open_connections_are_closed_at_the_deadline_and_health_answers(guarded):
    sockets = []
    for _ in range(64):  # the server's --max-connections: each sends half a request line and then nothing
        s = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHo")
        sockets.append(s)
    started = time.monotonic()
    try:
        while True:
            try:
                code = _status(guarded, "/health")
            except OSError:
                code = None
            if code == 200 or time.monotonic() - started > 10:
                break
            time.sleep(0.2)
        waited = time.monotonic() - started
        assert code == 200 and waited < 3 + 1.5, (code, waited)  # within the 3 s deadline of the server
        sockets[0].settimeout(5)
        assert sockets[0].recv(100) == b""  # closed by the server, not by us
    finally:
        for s in sockets:
            s.close()


def test_a_very_wide_upload_is_refused_fast_and_costs_no_memory(guarded):
    wide = io.BytesIO()
    Image.new("L", (200_000, 1)).save(wide, format="PNG")
    assert len(wide.getvalue()) < 1000
    pid = guarded.proc.pid
    _reset_peak_rss(pid)
    before = _rss_kib(pid, "VmRSS")
    started = time.monotonic()
    code, _, body = guarded.post_files([("wide.png", wide.getvalue())])
    took = time.monotonic() - started
    assert code == 400 and "aspect ratio" in body["error"] and took < 1.0, (code, body, took)
    assert (_rss_kib(pid, "VmHWM") - before) / 1024 < 200


def test_eps_gets_415_and_starts_no_process(guarded):
    pid = guarded.proc.pid
    code, _, body = guarded.post_files([("drawing.png", EPS), ("drawing.eps", EPS)])
    assert code == 415 and body["file"] == "drawing.png"
    children = [Path(t, "children").read_text().split() for t in Path(f"/proc/{pid}/task").iterdir()]
    assert not any(children), children


def test_a_jpeg_with_damaged_exif_gets_400_not_500(guarded):
    code, _, body = guarded.post_files([("phone.jpg", _jpeg_with_broken_exif())])
    assert code == 400 and "EXIF" in body["error"], body
    assert guarded.get("/health")[0] == 200


def test_abandoned_decodes_keep_their_slot_until_the_work_ends():
    release = threading.Event()

    def slow():
        release.wait(10)
        return "done"

    async def scenario():
        pool = DecodePool(threads=1, max_pending=2)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.run(slow), 0.05)  # the client gave up: the thread still decodes
        assert pool.pending == 1
        waiting = asyncio.ensure_future(pool.run(lambda: "next"))
        await asyncio.sleep(0.05)
        assert pool.pending == 2
        with pytest.raises(QueueFull):
            await pool.run(lambda: "refused")
        release.set()
        assert await waiting == "next"
        await asyncio.sleep(0.05)
        assert pool.pending == 0
        pool.shutdown()

    asyncio.run(scenario())


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _reset_peak_rss(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        pytest.skip("cannot reset the peak RSS of the server here")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
