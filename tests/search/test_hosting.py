"""ImageHost: AWS SigV4 pre-signing (AWS's published example), pre-signed PUT uploads to a loopback
S3 fake, the built-in image server, pass-through of task URLs, and SerpApi's Google Lens using a host."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import ImageQuery
from mmsearch_gym.search.hosting import LocalImageServer, S3ImageHost, build_image_host, presign_url, url_for
from mmsearch_gym.search.registry import build_backend

from .webfake import FakeWebServer, Reply, png_bytes

ACCESS, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
NOW = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)


def test_presigned_get_matches_aws_documented_example() -> None:
    url = presign_url("GET", "https://examplebucket.s3.amazonaws.com/test.txt", region="us-east-1",
                      access_key=ACCESS, secret_key=SECRET, expires=86400, now=NOW)
    assert url.endswith("X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    assert SECRET not in url


class FakeS3:
    """Accepts pre-signed PUTs whose signature it recomputes, serves the objects back on GET."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _verified(self) -> bool:
                query = parse_qs(urlsplit(self.path).query)
                signed = presign_url(self.command, f"http://{self.headers['Host']}{urlsplit(self.path).path}",
                                     region="us-east-1", access_key=ACCESS, secret_key=SECRET,
                                     expires=int(query["X-Amz-Expires"][0]),
                                     now=dt.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
                                     .replace(tzinfo=dt.UTC))
                return signed.rsplit("=", 1)[1] == query.get("X-Amz-Signature", [""])[0]

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not self._verified():
                    self.send_response(403)
                    self.end_headers()
                    return
                fake.puts += 1
                fake.objects[urlsplit(self.path).path] = body
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                data = fake.objects.get(urlsplit(self.path).path)
                if data is None or not self._verified():
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def s3() -> Iterator[FakeS3]:
    fake = FakeS3()
    yield fake
    fake.close()


def _host(s3: FakeS3, **kw: Any) -> S3ImageHost:
    return S3ImageHost(s3.url, "bucket", environ={"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET},
                       clock=lambda: NOW, trust_env=False, **kw)


def test_s3_upload_is_a_presigned_put_named_by_content_and_done_once(s3: FakeS3) -> None:
    host = _host(s3)
    png = png_bytes()
    url = host.upload(png)
    assert host.upload(png) == url and s3.puts == 1
    assert requests.get(url, timeout=5).content == png  # the pre-signed GET fetches it back
    assert SECRET not in url and SECRET not in repr(host)
    public = _host(s3, public_base_url="https://img.example.org").upload(png)
    assert public.startswith("https://img.example.org/mmsearch-gym/") and public.endswith(".png")


def test_s3_failures_and_missing_keys_are_clear(s3: FakeS3) -> None:
    bad = S3ImageHost(s3.url, "bucket", environ={"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": "wrong"},
                      clock=lambda: NOW, trust_env=False)
    with pytest.raises(Exception, match="HTTP 403") as info:
        bad.upload(png_bytes())
    assert "X-Amz-Signature" not in str(info.value)
    with pytest.raises(ConfigError, match="MY_SECRET"):
        S3ImageHost(s3.url, "b", secret_key_env="MY_SECRET", environ={"AWS_ACCESS_KEY_ID": ACCESS})
    with pytest.raises(ConfigError, match="environment variables"):
        build_image_host({"name": "s3", "endpoint": s3.url, "bucket": "b", "secret_key": SECRET})


def test_local_server_serves_uploaded_images_only() -> None:
    server = LocalImageServer()
    try:
        png = png_bytes((1, 2, 3))
        url = server.upload(png)
        session = requests.Session()
        session.trust_env = False
        assert session.get(url, timeout=5).content == png
        assert session.get(server.public_url + "/other.png", timeout=5).status_code == 404
    finally:
        server.close()


def test_task_urls_pass_through_and_crops_are_uploaded() -> None:
    image = Image.new("RGB", (8, 8), (9, 9, 9))
    server = LocalImageServer()
    try:
        assert url_for(ImageQuery(image, url="https://x.example/a.jpg"), server) == "https://x.example/a.jpg"
        assert url_for(ImageQuery(image, box=(0, 0, 4, 4), url="https://x.example/a.jpg"), server).startswith(
            server.public_url)
        assert url_for(ImageQuery(image), None) is None
    finally:
        server.close()


def test_serpapi_lens_searches_a_local_image_through_the_named_host(s3: FakeS3, monkeypatch) -> None:
    monkeypatch.setenv("SERPAPI_API_KEY", "serp-k")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    lens = {"search_metadata": {"status": "Success"},
            "visual_matches": [{"title": "A match", "link": "https://m.example", "source": "m.example"}]}
    with FakeWebServer([Reply(200, lens)]) as serp:
        backend = build_backend({"name": f"serpapi:{serp.url}/search.json",
                                 "image_host": {"name": "s3", "endpoint": s3.url, "bucket": "bucket",
                                                "public_base_url": "https://img.example.org", "trust_env": False}})
        backend.inner.client.session.trust_env = False
        hits = backend.image_search(ImageQuery(Image.new("RGB", (8, 8), (200, 0, 0))), 3)
        sent = serp.requests[0].param("url")
    assert [h.title for h in hits] == ["A match"] and s3.puts == 1
    assert sent.startswith("https://img.example.org/mmsearch-gym/") and json.dumps(sent).count("Signature") == 0
