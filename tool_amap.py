"""The geo tools (issue 16, the seed's geo assistant) on the AMap (高德) Web Service API.

    tools = geo_tools(settings)      # [] without AMAP_API_KEY
    # get_weather, search_poi, geocode; one AMap client (one httpx.AsyncClient) behind them

Endpoints (https://lbs.amap.com/api/webservice): `/v3/weather/weatherInfo` (`extensions=base`
-> `lives[]`, `all` -> `forecasts[].casts[]`), `/v3/place/text` (`pois[]`), `/v3/geocode/geo`
(`geocodes[]`). The key travels as the `key=` query parameter, as AMap requires. AMap answers
HTTP 200 even for errors, with `status: "0"`, `info` and `infocode` (10001 INVALID_USER_KEY,
10003 DAILY_QUERY_OVER_LIMIT, ...): each becomes a short `ToolError` saying what to do. No
result ever carries the key or the request URL (it has the key in its query): httpx's own
INFO request log is silenced by app.py, and nothing here logs or returns a URL. Empty fields
arrive as `[]` instead of "" in AMap's JSON; `_text` flattens them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from config import Settings
from provider_errors import redact
from tools import Tool, ToolError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://restapi.amap.com"
HTTP_TIMEOUT_S = 8.0  # AMap's own answers take well under a second
MAX_TEXT_ARGUMENT = 100  # a city, keywords or an address longer than this is not a query
MAX_POIS = 10
MAX_GEOCODES = 5

# infocode -> what the model (and through it the user) is told. The operator's problems say
# which setting to fix; the passing ones say when to try again.
_INFOCODES: dict[str, str] = {
    "10001": "the server's AMap key is invalid or expired (INVALID_USER_KEY); the operator "
    "should check AMAP_API_KEY.",
    "10002": "the server's AMap key may not use this service (SERVICE_NOT_AVAILABLE); the "
    "operator should enable the Web Service API for it.",
    "10003": "the AMap key has used up its daily quota (DAILY_QUERY_OVER_LIMIT); try again "
    "tomorrow.",
    "10004": "too many AMap requests right now (ACCESS_TOO_FREQUENT); try again in a minute.",
    "10005": "AMap refused this server's IP address (INVALID_USER_IP); the operator should "
    "check the key's IP whitelist.",
    "10009": "the AMap key is not a Web Service key (USERKEY_PLAT_NOMATCH); the operator "
    "should create a key for the Web Service platform.",
    "10010": "AMap has blocked this server's IP address for too many requests "
    "(IP_QUERY_OVER_LIMIT).",
    "10044": "the AMap account has used up its daily quota (USER_DAILY_QUERY_OVER_LIMIT); try "
    "again tomorrow.",
    "20000": "AMap rejected the request's parameters (INVALID_PARAMS); check the city, "
    "keywords or address.",
    "20001": "AMap is missing a required parameter (MISSING_REQUIRED_PARAMS).",
    "20003": "AMap had an internal error (UNKNOWN_ERROR); try again later.",
}


def _text(value: Any) -> str:
    """An AMap field as text: AMap sends [] (or a list of parts) where a value is empty."""
    if isinstance(value, list):
        return ";".join(str(item) for item in value if item not in ("", [], None))
    return "" if value is None else str(value)


def _argument(arguments: dict, name: str, required: bool = True) -> str:
    value = " ".join(str(arguments.get(name) or "").split())
    if required and not value:
        raise ToolError(f"{name} must not be empty.")
    if len(value) > MAX_TEXT_ARGUMENT:
        raise ToolError(f"{name} is too long (at most {MAX_TEXT_ARGUMENT} characters).")
    return value


def _dumps(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False)


class AMap:
    """One AMap Web Service account: the key, the base URL and one shared HTTP client (made
    on first use, inside the running event loop; `aclose` ends it)."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = HTTP_TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout_s = timeout_s
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, path: str, params: dict[str, str]) -> dict:
        """The JSON body of a successful call (`status` "1"), else a ToolError."""
        query = {**{k: v for k, v in params.items() if v}, "key": self._key, "output": "JSON"}
        try:
            response = await self._http().get(self.base_url + path, params=query)
        except httpx.TimeoutException:
            raise ToolError(
                f"AMap did not answer within {self.timeout_s:g} s; try again."
            ) from None
        except httpx.HTTPError as exc:  # str(exc) may hold the URL, so the key: not used
            log.warning("AMap %s: %s", path, type(exc).__name__)
            raise ToolError("could not reach AMap (network error); try again later.") from None
        if response.status_code != 200:
            raise ToolError(f"AMap answered HTTP {response.status_code}; try again later.")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ToolError("AMap sent an answer that is not JSON; try again later.")
        if str(body.get("status")) != "1":
            raise ToolError(self._error_message(path, body))
        return body

    def _error_message(self, path: str, body: dict) -> str:
        code = _text(body.get("infocode"))[:10]
        info = redact(_text(body.get("info")), (self._key,))[:80]
        log.warning("AMap %s refused: infocode %s %s", path, code, info)
        known = _INFOCODES.get(code)
        if known:
            return f"AMap: {known}"
        return f"AMap refused the request: {info or 'no reason given'} (infocode {code or '?'})."

    # ---- the tools

    async def weather(self, arguments: dict) -> str:
        city = _argument(arguments, "city")
        forecast = bool(arguments.get("forecast", False))
        body = await self.get(
            "/v3/weather/weatherInfo",
            {"city": city, "extensions": "all" if forecast else "base"},
        )
        return _dumps(_forecast(body, city) if forecast else _live(body, city))

    async def search_poi(self, arguments: dict) -> str:
        keywords = _argument(arguments, "keywords")
        city = _argument(arguments, "city", required=False)
        params = {"keywords": keywords, "city": city, "offset": str(MAX_POIS), "page": "1"}
        if city:
            params["citylimit"] = "true"  # "coffee in 杭州" means in it, not ranked first
        body = await self.get("/v3/place/text", params)
        pois = [_poi(poi) for poi in (body.get("pois") or [])[:MAX_POIS] if isinstance(poi, dict)]
        if not pois:
            where = f" in {city}" if city else ""
            raise ToolError(f"AMap found no places for {keywords!r}{where}; try other keywords.")
        return _dumps({"count": _count(body, len(pois)), "pois": pois})

    async def geocode(self, arguments: dict) -> str:
        address = _argument(arguments, "address")
        city = _argument(arguments, "city", required=False)
        body = await self.get("/v3/geocode/geo", {"address": address, "city": city})
        found = [g for g in (body.get("geocodes") or []) if isinstance(g, dict)]
        if not found:
            raise ToolError(f"AMap could not locate {address!r}; add the city or more detail.")
        return _dumps({"count": len(found), "results": [_geocode(g) for g in found[:MAX_GEOCODES]]})


def _count(body: dict, fallback: int) -> int:
    try:
        return int(body.get("count") or fallback)
    except (TypeError, ValueError):
        return fallback


def _live(body: dict, city: str) -> dict:
    lives = [live for live in (body.get("lives") or []) if isinstance(live, dict)]
    if not lives:
        raise ToolError(_no_weather(city))
    live = lives[0]
    return {
        "city": _text(live.get("city")),
        "province": _text(live.get("province")),
        "adcode": _text(live.get("adcode")),
        "weather": _text(live.get("weather")),
        "temperature_c": _text(live.get("temperature")),
        "wind_direction": _text(live.get("winddirection")),
        "wind_power": _text(live.get("windpower")),
        "humidity_percent": _text(live.get("humidity")),
        "report_time": _text(live.get("reporttime")),
    }


def _forecast(body: dict, city: str) -> dict:
    forecasts = [f for f in (body.get("forecasts") or []) if isinstance(f, dict)]
    if not forecasts or not forecasts[0].get("casts"):
        raise ToolError(_no_weather(city))
    first = forecasts[0]
    days = [
        {
            "date": _text(cast.get("date")),
            "week": _text(cast.get("week")),
            "day_weather": _text(cast.get("dayweather")),
            "night_weather": _text(cast.get("nightweather")),
            "day_temp_c": _text(cast.get("daytemp")),
            "night_temp_c": _text(cast.get("nighttemp")),
            "day_wind": _text(cast.get("daywind")),
            "night_wind": _text(cast.get("nightwind")),
            "day_power": _text(cast.get("daypower")),
            "night_power": _text(cast.get("nightpower")),
        }
        for cast in first["casts"]
        if isinstance(cast, dict)
    ]
    return {
        "city": _text(first.get("city")),
        "province": _text(first.get("province")),
        "adcode": _text(first.get("adcode")),
        "report_time": _text(first.get("reporttime")),
        "days": days,
    }


def _no_weather(city: str) -> str:
    return f"AMap has no weather for {city!r}; use a city name such as 北京 or an adcode (110000)."


def _poi(poi: dict) -> dict:
    return {
        "name": _text(poi.get("name")),
        "address": _text(poi.get("address")),
        "type": _text(poi.get("type")),
        "location": _text(poi.get("location")),  # "lng,lat" (GCJ-02)
        "tel": _text(poi.get("tel")),
        "city": _text(poi.get("cityname")),
        "district": _text(poi.get("adname")),
    }


def _geocode(found: dict) -> dict:
    return {
        "formatted_address": _text(found.get("formatted_address")),
        "province": _text(found.get("province")),
        "city": _text(found.get("city")),
        "district": _text(found.get("district")),
        "adcode": _text(found.get("adcode")),
        "location": _text(found.get("location")),  # "lng,lat" (GCJ-02)
        "level": _text(found.get("level")),
    }


def _string(description: str) -> dict:
    return {"type": "string", "description": description}


def amap_tools(amap: AMap, timeout_s: float | None = None) -> list[Tool]:
    """The geo tools on one AMap account. The tool timeout leaves AMap's HTTP timeout room to
    fire first, so a slow AMap reads "did not answer", not a bare timeout."""
    limit = timeout_s if timeout_s is not None else amap.timeout_s + 2.0
    city = "city name (北京, 杭州市) or adcode (110000)"
    return [
        Tool(
            name="get_weather",
            description="Current weather, or a 3-4 day forecast, for a city in China (AMap).",
            parameters={
                "type": "object",
                "properties": {
                    "city": _string(city),
                    "forecast": {
                        "type": "boolean",
                        "description": "true for the forecast by day, false (default) for now",
                    },
                },
                "required": ["city"],
                "additionalProperties": False,
            },
            run=amap.weather,
            timeout_s=limit,
            group="geo",
        ),
        Tool(
            name="search_poi",
            description=(
                "Search places (POI) in China by keywords, optionally within a city (AMap): "
                f"up to {MAX_POIS} with name, address, type, location (lng,lat) and phone."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "keywords": _string("what to look for, e.g. 咖啡 or 北京大学"),
                    "city": _string("optional " + city),
                },
                "required": ["keywords"],
                "additionalProperties": False,
            },
            run=amap.search_poi,
            timeout_s=limit,
            group="geo",
        ),
        Tool(
            name="geocode",
            description="Coordinates (lng,lat) and the adcode of an address in China (AMap).",
            parameters={
                "type": "object",
                "properties": {
                    "address": _string("a structured address, e.g. 北京市朝阳区阜通东大街6号"),
                    "city": _string("optional " + city + " to narrow the search"),
                },
                "required": ["address"],
                "additionalProperties": False,
            },
            run=amap.geocode,
            timeout_s=limit,
            group="geo",
        ),
    ]


def geo_tools(settings: Settings, timeout_s: float = HTTP_TIMEOUT_S) -> list[Tool]:
    """The geo tools when AMAP_API_KEY is set, else []. They share one `AMap` (one client)."""
    if not settings.amap_api_key:
        return []
    return amap_tools(AMap(settings.amap_api_key, settings.amap_base_url, timeout_s))
