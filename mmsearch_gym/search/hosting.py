"""ImageHost: make a local image reachable by URL for reverse image search.

Google Lens (through SerpApi) only searches images at a public URL, and MMSearch-R1's FVQA rows
carry image bytes, often without one. An :class:`ImageHost` turns PNG bytes into an http(s) URL:

* :class:`S3ImageHost` uploads to any S3-compatible store (AWS S3, Cloudflare R2, MinIO,
  Backblaze B2 ...) with a pre-signed ``PUT`` (AWS Signature V4 computed here, sent with plain
  requests) and answers with the object's public URL (``public_base_url``) or a pre-signed
  ``GET``. Objects are named by content digest, so an image is uploaded once.
* :class:`LocalImageServer` serves the images itself from a small built-in HTTP server, for
  self-hosted backends on the same network.
* Pass-through: a task with its own ``image_url`` needs no host (the backends use that URL
  for whole-image searches; :func:`url_for` shows the rule). Google Vision keeps sending bytes.

Keys come from environment variables named in the spec (``access_key_env``,
``secret_key_env``); they never appear in a URL except as the signature they produce.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import requests

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import ImageQuery, SearchError
from mmsearch_gym.search.http import Secret, public_url

__all__ = ["ImageHost", "LocalImageServer", "S3ImageHost", "build_image_host", "presign_url", "url_for"]


@runtime_checkable
class ImageHost(Protocol):
    """Turns PNG bytes into an http(s) URL that a search API can fetch."""

    def upload(self, png: bytes) -> str: ...


def url_for(image: ImageQuery, host: ImageHost | None) -> str | None:
    """The URL to search ``image`` by: the task's own URL for the whole image, else ``host``'s upload."""
    if image.box is None and image.url:
        return image.url
    return host.upload(image.png_bytes()) if host is not None else None


def _digest_name(png: bytes, prefix: str) -> str:
    return f"{prefix}{hashlib.sha256(png).hexdigest()}.png"


# --------------------------------------------------------------------------------------------
# S3-compatible storage through pre-signed URLs
# --------------------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def presign_url(method: str, url: str, *, region: str, access_key: str, secret_key: str, expires: int,
                now: _dt.datetime | None = None, service: str = "s3") -> str:
    """``url`` with an AWS Signature V4 query-string signature (signed header: host; unsigned payload).

    This is what S3 and every S3-compatible store accept as a pre-signed URL.
    """
    if not 1 <= int(expires) <= 604_800:
        raise ConfigError("a pre-signed URL expires after 1 s to 7 days (604800 s)")
    parts = urlsplit(url)
    when = (now or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
    stamp, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    scope = f"{day}/{region}/{service}/aws4_request"
    params = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{access_key}/{scope}",
              "X-Amz-Date": stamp, "X-Amz-Expires": str(int(expires)), "X-Amz-SignedHeaders": "host"}
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
    path = quote(parts.path or "/", safe="/-_.~")
    canonical = "\n".join([method, path, query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{parts.scheme}://{parts.netloc}{path}?{query}&X-Amz-Signature={signature}"


class S3ImageHost:
    """Uploads to an S3-compatible bucket with pre-signed PUTs; answers a public or pre-signed GET URL.

    Args:
        endpoint: the store's URL (``https://s3.us-east-1.amazonaws.com``,
            ``https://ACCOUNT.r2.cloudflarestorage.com``, ``http://minio:9000``).
        bucket: the bucket; objects go to ``{endpoint}/{bucket}/{prefix}{sha256}.png`` (path style).
        region: the signing region (``auto`` for R2, ``us-east-1`` for MinIO).
        access_key_env / secret_key_env: the environment variables holding the keys.
        public_base_url: where the bucket is publicly readable (then no GET is signed).
        expires: lifetime of the pre-signed URLs in seconds.
    """

    def __init__(self, endpoint: str, bucket: str, *, region: str = "us-east-1", prefix: str = "mmsearch-gym/",
                 access_key_env: str = "AWS_ACCESS_KEY_ID", secret_key_env: str = "AWS_SECRET_ACCESS_KEY",
                 public_base_url: str | None = None, expires: int = 3600, timeout: float = 30.0,
                 max_attempts: int = 3, trust_env: bool = True, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], _dt.datetime] | None = None) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"image host endpoint must be an http(s) URL, got {public_url(endpoint)!r}")
        if not bucket or "/" in bucket:
            raise ConfigError(f"image host bucket must be a bucket name, got {bucket!r}")
        env = environ if environ is not None else os.environ
        keys = []
        for var in (access_key_env, secret_key_env):
            value = env.get(var, "").strip()
            if not value:
                raise ConfigError(f"the S3 image host needs its keys: set the environment variable {var}")
            keys.append(Secret(value))
        self._access, self._secret = keys
        self.endpoint, self.bucket, self.region, self.prefix = endpoint.rstrip("/"), bucket, region, prefix
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.expires = int(expires)
        self.timeout, self.max_attempts = float(timeout), max(1, int(max_attempts))
        self.session = requests.Session()
        self.session.trust_env = bool(trust_env)
        self._clock = clock
        self._uploaded: dict[str, str] = {}
        self._lock = threading.Lock()

    def _put(self, url: str, png: bytes, shown: str) -> None:
        """One upload, tried up to ``max_attempts`` times on connection errors and 5xx; messages show no signature."""
        reason = ""
        for _ in range(self.max_attempts):
            try:
                response = self.session.put(url, data=png, headers={"Content-Type": "image/png"},
                                            timeout=(5.0, self.timeout))
            except requests.RequestException as err:
                reason = type(err).__name__
                continue
            if response.status_code < 300:
                return
            reason = f"HTTP {response.status_code}"
            if response.status_code < 500:
                break
        raise SearchError(f"uploading the image to {shown} failed: {reason}")

    def _sign(self, method: str, url: str) -> str:
        return presign_url(method, url, region=self.region, access_key=self._access.reveal(),
                           secret_key=self._secret.reveal(), expires=self.expires,
                           now=self._clock() if self._clock else None)

    def upload(self, png: bytes) -> str:
        name = _digest_name(png, self.prefix)
        with self._lock:
            if name in self._uploaded:
                return self._uploaded[name]
        object_url = f"{self.endpoint}/{self.bucket}/{name}"
        self._put(self._sign("PUT", object_url), png, public_url(object_url))
        url = f"{self.public_base_url}/{name}" if self.public_base_url else self._sign("GET", object_url)
        with self._lock:
            self._uploaded[name] = url
        return url

    def __repr__(self) -> str:
        return f"S3ImageHost({public_url(self.endpoint)!r}, bucket={self.bucket!r})"


# --------------------------------------------------------------------------------------------
# A small built-in server
# --------------------------------------------------------------------------------------------


class LocalImageServer:
    """Serves uploaded images at ``{public_url}/{sha256}.png`` from a thread in this process.

    Binds ``host:port`` (``127.0.0.1`` and a free port by default; ``0.0.0.0`` to serve a
    self-hosted backend on another machine of the network, with ``public_url`` the address it
    reaches us at). Only images uploaded to it are served; anything else is 404.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, public_url: str | None = None,
                 max_images: int = 10_000) -> None:
        images: dict[str, bytes] = {}
        self._images = images
        self._max = int(max_images)
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = images.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer((host, int(port)), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_port)
        self.public_url = (public_url or f"http://{host}:{self.port}").rstrip("/")
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True, name="mmsearch-image-server")
        self._thread.start()

    def upload(self, png: bytes) -> str:
        name = _digest_name(png, "")
        with self._lock:
            if name not in self._images:
                if len(self._images) >= self._max:
                    self._images.pop(next(iter(self._images)))  # oldest first
                self._images[name] = bytes(png)
        return f"{self.public_url}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"LocalImageServer({self.public_url!r})"


_LOCAL: dict[tuple[str, int, str], LocalImageServer] = {}


def build_image_host(spec: Any) -> ImageHost:
    """``{"name": "s3", "endpoint", "bucket", ...}``, ``"local"`` / ``{"name": "local", "host", "port",
    "public_url"}``, or an ImageHost object. Local servers are shared within a process."""
    if isinstance(spec, ImageHost) and not isinstance(spec, (str, Mapping)):
        return spec
    options: dict[str, Any] | None = ({"name": spec} if isinstance(spec, str)
                                      else dict(spec) if isinstance(spec, Mapping) else None)
    if options is None:
        raise ConfigError(f"image_host must be 's3', 'local' or a mapping, got {type(spec).__name__}")
    name = options.pop("name", None)
    if "access_key" in options or "secret_key" in options:
        raise ConfigError("image_host spec holds a key value; name its environment variables instead "
                          "(access_key_env, secret_key_env)")
    try:
        if name == "s3":
            return S3ImageHost(**options)
        if name == "local":
            key = (str(options.get("host", "127.0.0.1")), int(options.get("port", 0)),
                   str(options.get("public_url", "")))
            if key not in _LOCAL or key[1] == 0 and not _LOCAL[key]._thread.is_alive():
                _LOCAL[key] = LocalImageServer(**options)
            return _LOCAL[key]
    except TypeError as err:
        raise ConfigError(f"image_host {name}: bad option ({err})") from None
    raise ConfigError(f"unknown image host {name!r}; use 's3' (pre-signed uploads) or 'local' (built-in server)")
