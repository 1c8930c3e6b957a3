"""A real HTTP server speaking the AMap (高德) Web Service API for tests.

    with FakeAMap(api_key="k") as amap:
        ... AMAP_BASE_URL=amap.url, AMAP_API_KEY="k" ...
        amap.fail("10003")              # the next request: DAILY_QUERY_OVER_LIMIT
        amap.slow(2.0)                  # the next request waits 2 s before it answers
        assert amap.requests[0].params["key"] == "k"

It answers `/v3/weather/weatherInfo` (`extensions=base` -> `lives`, `all` ->
`forecasts[].casts`), `/v3/place/text` (`pois`) and `/v3/geocode/geo` (`geocodes`) in AMap's
real shapes: every value a string, an empty field as `[]`, HTTP 200 with `status` "0",
`info` and `infocode` on errors. A wrong key gets AMap's INVALID_USER_KEY, an unknown city an
empty result (`count` "0"), as the real service does. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

# AMap's own error table (https://lbs.amap.com/api/webservice/guide/tools/info).
INFOCODES = {
    "10001": "INVALID_USER_KEY",
    "10002": "SERVICE_NOT_AVAILABLE",
    "10003": "DAILY_QUERY_OVER_LIMIT",
    "10004": "ACCESS_TOO_FREQUENT",
    "10005": "INVALID_USER_IP",
    "10009": "USERKEY_PLAT_NOMATCH",
    "10010": "IP_QUERY_OVER_LIMIT",
    "10044": "USER_DAILY_QUERY_OVER_LIMIT",
    "20000": "INVALID_PARAMS",
    "20001": "MISSING_REQUIRED_PARAMS",
    "20003": "UNKNOWN_ERROR",
}

CITIES = {  # name or adcode -> (province, city, adcode)
    "北京": ("北京", "北京市", "110000"),
    "北京市": ("北京", "北京市", "110000"),
    "110000": ("北京", "北京市", "110000"),
    "杭州": ("浙江", "杭州市", "330100"),
    "330100": ("浙江", "杭州市", "330100"),
}


@dataclass
class AMapRequest:
    path: str
    params: dict[str, str]
    raw_query: str


def _ok(**payload: object) -> dict:
    return {"status": "1", "info": "OK", "infocode": "10000", **payload}


def error_body(infocode: str, info: str | None = None) -> dict:
    return {"status": "0", "info": info or INFOCODES.get(infocode, "UNKNOWN"), "infocode": infocode}


def live(city: str) -> dict:
    province, name, adcode = CITIES[city]
    return {
        "province": province,
        "city": name,
        "adcode": adcode,
        "weather": "晴",
        "temperature": "21",
        "winddirection": "南",
        "windpower": "≤3",
        "humidity": "30",
        "reporttime": "2026-05-01 14:00:00",
        "temperature_float": "21.0",
        "humidity_float": "30.0",
    }


def forecast(city: str) -> dict:
    province, name, adcode = CITIES[city]
    casts = [
        {
            "date": f"2026-05-0{day}",
            "week": str(day + 4),
            "dayweather": "多云" if day % 2 else "小雨",
            "nightweather": "晴",
            "daytemp": str(24 + day),
            "nighttemp": str(12 + day),
            "daywind": "东",
            "nightwind": "东",
            "daypower": "1-3",
            "nightpower": "1-3",
            "daytemp_float": f"{24 + day}.0",
            "nighttemp_float": f"{12 + day}.0",
        }
        for day in range(1, 5)
    ]
    return {
        "city": name,
        "adcode": adcode,
        "province": province,
        "reporttime": "2026-05-01 11:00:00",
        "casts": casts,
    }


def poi(index: int, keywords: str, city: str) -> dict:
    return {
        "id": f"B0FFG{index:05d}",
        "parent": [],
        "name": f"{keywords}{index}号店",
        "type": "餐饮服务;咖啡厅;咖啡厅",
        "typecode": "050500",
        "address": f"示范路{index}号" if index != 2 else [],  # AMap: [] when it has none
        "location": f"116.{400000 + index},39.{900000 + index}",
        "tel": "010-12345678" if index != 3 else [],
        "pname": "北京市",
        "cityname": city or "北京市",
        "adname": "朝阳区",
        "distance": [],
    }


class FakeAMap:
    """The scripted AMap server (see the module docstring)."""

    def __init__(self, api_key: str = "test-amap-key", pois: int = 25) -> None:
        self.api_key = api_key
        self.pois = pois  # how many POIs a search finds (AMap pages them: offset, page)
        self.requests: list[AMapRequest] = []
        self._errors: deque[str] = deque()
        self._delays: deque[float] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.amap = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    def start(self) -> FakeAMap:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAMap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, *infocodes: str) -> FakeAMap:
        """The next requests answer these infocodes (AMap's HTTP 200 + status "0")."""
        with self._lock:
            self._errors.extend(infocodes)
        return self

    def slow(self, seconds: float) -> FakeAMap:
        """The next request waits `seconds` before it answers."""
        with self._lock:
            self._delays.append(seconds)
        return self

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._errors.clear()
            self._delays.clear()

    def _take(self, request: AMapRequest) -> tuple[str | None, float]:
        with self._lock:
            self.requests.append(request)
            code = self._errors.popleft() if self._errors else None
            delay = self._delays.popleft() if self._delays else 0.0
            return code, delay

    def answer(self, request: AMapRequest) -> tuple[int, dict]:
        code, delay = self._take(request)
        if delay:
            time.sleep(delay)
        if code:
            return 200, error_body(code)
        params = request.params
        if params.get("key") != self.api_key:
            return 200, error_body("10001")
        route = ROUTES.get(request.path)
        if route is None:  # AMap's answer to a misspelt path
            return 200, error_body("10002")
        return 200, route(self, params)


def _weather(amap: FakeAMap, params: dict[str, str]) -> dict:
    city = params.get("city", "")
    if not city:
        return error_body("20001")
    extensions = params.get("extensions", "base")
    if city not in CITIES:  # the real service: success with nothing in it
        return _ok(count="0", **({"forecasts": []} if extensions == "all" else {"lives": []}))
    if extensions == "all":
        return _ok(count="1", forecasts=[forecast(city)])
    return _ok(count="1", lives=[live(city)])


def _place_text(amap: FakeAMap, params: dict[str, str]) -> dict:
    keywords = params.get("keywords", "")
    if not keywords:
        return error_body("20000")
    offset, page = int(params.get("offset") or 20), int(params.get("page") or 1)
    found = 0 if keywords == "nothing" else amap.pois
    start = (page - 1) * offset
    pois = [
        poi(i, keywords, params.get("city", ""))
        for i in range(start + 1, min(found, start + offset) + 1)
    ]
    return _ok(count=str(found), suggestion={"keywords": [], "cities": []}, pois=pois)


def _geocode(amap: FakeAMap, params: dict[str, str]) -> dict:
    address = params.get("address", "")
    if not address:
        return error_body("20000")
    if "nowhere" in address:
        return _ok(count="0", geocodes=[])
    geocode = {
        "formatted_address": "北京市朝阳区阜通东大街6号",
        "country": "中国",
        "province": "北京市",
        "citycode": "010",
        "city": "北京市",
        "district": "朝阳区",
        "township": [],
        "neighborhood": {"name": [], "type": []},
        "building": {"name": [], "type": []},
        "adcode": "110105",
        "street": "阜通东大街",
        "number": "6号",
        "location": "116.480881,39.989410",
        "level": "门牌号",
    }
    return _ok(count="1", geocodes=[geocode])


ROUTES = {
    "/v3/weather/weatherInfo": _weather,
    "/v3/place/text": _place_text,
    "/v3/geocode/geo": _geocode,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server's name
        parts = urlsplit(self.path)
        request = AMapRequest(parts.path, dict(parse_qsl(parts.query)), parts.query)
        status, payload = self.server.amap.answer(request)  # type: ignore[attr-defined]
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass
