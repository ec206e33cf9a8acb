"""A small client of RunPod's REST API v1 (https://rest.runpod.io/v1).

The key travels only in the `Authorization: Bearer` header: it is never part
of a message, a log line or a printed request. Every failure is an `ApiError`
whose text is one line: RunPod's own message and what to fix.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.errors import KitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the runpod SDK's own TOML reader, a dependency of the SDK on 3.10
    import tomli as tomllib

BASE_URL = "https://rest.runpod.io/v1"
BASE_URL_ENV = "RUNPOD_REST_URL"
KEY_ENV = "RUNPOD_API_KEY"
# Where `runpod config` (the runpod SDK's CLI) stores the account key: [default] api_key = "..."
SDK_CONFIG = Path("~/.runpod/config.toml")
TIMEOUT = 30.0

ACCOUNT_KEY_HINT = (
    "a pod's own RUNPOD_API_KEY is pod-scoped and may not manage endpoints: create an API key with "
    "read/write access at https://www.runpod.io/console/user/settings and set RUNPOD_API_KEY to it "
    "(or run `runpod config`)"
)


@dataclass(frozen=True)
class ApiKey:
    """The key and where it came from (said in --plan instead of the key)."""

    value: str = field(repr=False)
    source: str

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def find_key(environ: dict[str, str] | None = None, config: Path | None = None) -> ApiKey:
    """RUNPOD_API_KEY, else the default profile of ~/.runpod/config.toml; KitError when neither has one."""
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV, "").strip()
    if value:
        return ApiKey(value, f"${KEY_ENV}")
    path = (config or SDK_CONFIG).expanduser()
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        data = {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise KitError(f"cannot read {path}: {error}", f"fix it with `runpod config`, or set {KEY_ENV}") from None
    profile = data.get("default")
    key = profile.get("api_key") if isinstance(profile, dict) else None
    if isinstance(key, str) and key.strip():
        return ApiKey(key.strip(), str(path))
    raise KitError(
        f"no RunPod API key: {KEY_ENV} is not set and {path} has none",
        f"set {KEY_ENV} to an account key (RunPod console > Settings > API Keys) or run `runpod config`",
    )


def base_url(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url = env.get(BASE_URL_ENV, "").strip() or BASE_URL
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise KitError(f"{BASE_URL_ENV}={url!r} is not an http(s) URL", f"unset it to use {BASE_URL}")
    return url.rstrip("/")


class ApiError(KitError):
    """A request RunPod refused or that did not reach it. `status` is None for network errors."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None):
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query string
    body: dict[str, Any] | None = None

    def describe(self, key: ApiKey) -> str:
        """The request as --plan prints it: the key named by its source, never shown."""
        text = f"{self.method} {self.path}\n  Authorization: Bearer <key from {key.source}>"
        if self.body is not None:
            text += "\n" + "\n".join("  " + line for line in json.dumps(self.body, indent=2, sort_keys=True).splitlines())
        return text


def path(template: str, *ids: str, **query: bool) -> str:
    """`/pods/{}` with its ids quoted (an id from an API answer is input too) and boolean query flags."""
    built = template.format(*(urllib.parse.quote(i, safe="") for i in ids))
    if query:
        built += "?" + urllib.parse.urlencode({k: "true" if v else "false" for k, v in query.items()})
    return built


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would resend the Authorization header to wherever a redirect points: never follow one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    def __init__(self, key: ApiKey, url: str = BASE_URL, timeout: float = TIMEOUT):
        self.key = key
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, request: Request) -> Any:
        data = None if request.body is None else json.dumps(request.body).encode()
        headers = {**self.key.header(), "Accept": "application/json", "User-Agent": "runpod-kit"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        http = urllib.request.Request(self.url + request.path, data=data, method=request.method, headers=headers)
        what = f"{request.method} {request.path.split('?')[0]}"
        try:
            with self._opener.open(http, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise _http_error(what, error.code, error.read()) from None
        except TimeoutError:
            raise ApiError(
                f"{what}: RunPod's API did not answer within {self.timeout:.0f} s", "check the network and run the command again"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(f"{what}: cannot reach {self.url} ({reason})", _reach_hint()) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(f"{what}: RunPod's API answered with something that is not JSON", _reach_hint()) from None

    def get(self, path: str) -> Any:
        return self.send(Request("GET", path))


def _reach_hint() -> str:
    return f"check the network, or {BASE_URL_ENV} if you set it"


def _message(raw: bytes) -> str:
    """RunPod's error text: a JSON body's `error`/`message`, else the body itself, on one short line."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for name in ("error", "message", "detail"):
            if isinstance(data.get(name), str) and data[name].strip():
                text = data[name]
                break
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _http_error(what: str, status: int, raw: bytes) -> ApiError:
    message = _message(raw) or "no message"
    if status in (401, 403):
        return ApiError(f"{what}: RunPod refused the API key ({status}: {message})", ACCOUNT_KEY_HINT, status=status)
    if status == 404:
        return ApiError(f"{what}: not found (404: {message})", "check the id, or that the key belongs to its account", status=status)
    if 300 <= status < 400:
        return ApiError(
            f"{what}: the API answered with a redirect ({status}), which kit deploy does not follow with your key",
            _reach_hint(),
            status=status,
        )
    if status == 429:
        return ApiError(f"{what}: too many requests (429: {message})", "wait a minute and run the command again", status=status)
    if status >= 500:
        return ApiError(f"{what}: RunPod's API failed ({status}: {message})", "run the command again in a minute", status=status)
    return ApiError(f"{what}: RunPod refused the request ({status}: {message})", "fix the setting it names", status=status)
