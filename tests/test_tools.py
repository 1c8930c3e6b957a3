"""The tool registry and the built-in tools (issue 16, items 2-3): the registry's contract,
the calculator's refusals, current_time, and the AMap tools against a real fake AMap server
(tests/fake_amap.py) over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from datetime import UTC, datetime

import pytest

from config import load_settings
from tests.fake_amap import FakeAMap
from tool_amap import AMap, amap_tools, geo_tools
from tool_builtin import builtin_tools, evaluate, format_number, now_in
from tools import MAX_RESULT_CHARS, Tool, ToolError, ToolRegistry, cap

pytestmark = pytest.mark.anyio

KEY = "amapkey0123456789abcdef0123456789"


def registry(*extra: Tool) -> ToolRegistry:
    return ToolRegistry([*builtin_tools(), *extra])


def tool(name: str, run, timeout_s: float = 1.0, **parameters) -> Tool:
    schema = {"type": "object", "properties": parameters, "required": list(parameters)}
    return Tool(
        name=name, description=f"test tool {name}", parameters=schema, run=run, timeout_s=timeout_s
    )


# ---- calculator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("0.1 + 0.2", "0.3"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("2 ** 10", "1024"),
        ("-3 + +4", "1"),
        ("10 / 4", "2.5"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(pi, 3)", "3.142"),
        ("log(8, 2)", "3"),
        ("factorial(10)", "3628800"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("2 ** 0.5", "1.41421356237"),
        ("10 ** 299", "1" + "0" * 299),
    ],
)
def test_calculator_computes(expression, expected):
    assert format_number(evaluate(expression)) == expected


@pytest.mark.parametrize(
    "expression, said",
    [
        ("__import__('os').system('true')", "only the listed functions"),
        ("__import__('os')", "unknown function"),
        ("os", "unknown name"),
        ("x + 1", "unknown name"),
        ("(1).__class__", "not allowed"),
        ("math.sqrt(4)", "only the listed functions"),
        ("eval('1')", "unknown function"),
        ("open('/etc/passwd')", "unknown function"),
        ("(lambda: 1)()", "only the listed functions"),
        ("[1, 2]", "not allowed"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1j * 2", "only numbers"),
        ("round(2.5, ndigits=1)", "plain arguments"),
        ("9 ** 10 ** 8", "too large"),
        ("10 ** 300", "too large"),
        ("(10 ** 299) * (10 ** 299)", "too large"),
        ("factorial(100000)", "limited"),
        ("exp(1000)", "too large"),
        ("1e308 * 10", "too large"),
        ("1e200 * 1e200", "not a finite"),
        ("(-8) ** 0.5", "not a real number"),
        ("sqrt(-1)", "not defined"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ^ 3", "use **"),
        ("1 +", "not valid"),
        ("", "empty"),
        ("1+" * 200 + "1", "too long"),
        ("(" * 40 + "1" + ")" * 40, None),  # deep but legal: fine
    ],
)
def test_calculator_refuses_what_is_not_arithmetic(expression, said):
    if said is None:
        assert evaluate(expression) == 1
        return
    with pytest.raises(ToolError, match=re.escape(said)):
        evaluate(expression)


def test_calculator_stays_fast_on_hostile_input():
    started = time.monotonic()
    for expression in (
        "9 ** 9 ** 9",
        "2 ** 2 ** 2 ** 2 ** 2",
        "factorial(170) ** 2",
        "-" * 299 + "1",
    ):
        with contextlib.suppress(ToolError):
            evaluate(expression)
    assert time.monotonic() - started < 0.5


# ---- current_time ---------------------------------------------------------------------------


def test_current_time_in_a_zone_and_utc_by_default():
    moment = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert now_in("Asia/Shanghai", moment) == {
        "timezone": "Asia/Shanghai",
        "iso": "2026-05-01T20:00:00+08:00",
        "weekday": "Friday",
        "utc_offset": "+08:00",
    }
    assert now_in("", moment)["iso"] == "2026-05-01T12:00:00+00:00"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "x" * 80])
def test_current_time_refuses_an_unknown_zone(zone):
    with pytest.raises(ToolError, match="time zone"):
        now_in(zone)


async def test_current_time_through_the_registry_is_now():
    result = await registry().call("current_time", '{"timezone": "Europe/London"}')
    assert result.ok, result.content
    stamp = datetime.fromisoformat(json.loads(result.content)["iso"])
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5


# ---- the registry --------------------------------------------------------------------------


def test_select_default_none_and_names():
    tools = registry()
    assert tools.select("", default=["calculator"])[0].name == "calculator"
    assert tools.select("", default=[]) == []
    assert tools.select("none", default=["calculator"]) == []
    assert tools.select(" NONE ", default=["calculator"]) == []
    picked = tools.select("current_time, calculator,,calculator", default=[])
    assert [t.name for t in picked] == ["current_time", "calculator"]


def test_select_refuses_unknown_names_listing_the_known_ones():
    with pytest.raises(ValueError) as caught:
        registry().select("calculator,teleport", default=[])
    message = str(caught.value)
    assert "teleport" in message and "calculator, current_time" in message
    with pytest.raises(ValueError, match="teleport"):
        registry().select("", default=["teleport"])  # a mistyped TOOLS default


def test_openai_tools_payload():
    payload = registry().openai_tools(["calculator"])
    assert payload == [
        {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": payload[0]["function"]["description"],
                "parameters": payload[0]["function"]["parameters"],
            },
        }
    ]
    assert payload[0]["function"]["parameters"]["required"] == ["expression"]
    assert [t["function"]["name"] for t in registry().openai_tools()] == [
        "calculator",
        "current_time",
    ]
    json.dumps(registry().openai_tools())  # serialisable as it is sent
    with pytest.raises(ValueError, match="nope"):
        registry().openai_tools(["nope"])


def test_registration_rules():
    tools = registry()
    assert tools.names() == ["calculator", "current_time"] and "calculator" in tools
    assert tools.get("calculator") is not None and tools.get("nope") is None
    with pytest.raises(ValueError, match="already"):
        tools.register(builtin_tools()[0])
    with pytest.raises(ValueError, match="letters"):
        tool("has space", None)
    with pytest.raises(ValueError, match="object"):
        Tool("t", "d", {"type": "string"}, run=None)  # type: ignore[arg-type]


async def test_call_runs_a_tool():
    result = await registry().call("calculator", '{"expression": "6 * 7"}')
    assert (result.name, result.arguments, result.ok, result.content) == (
        "calculator",
        {"expression": "6 * 7"},
        True,
        "42",
    )
    assert result.duration_ms >= 0


@pytest.mark.parametrize(
    "arguments, said",
    [
        ('{"expression": ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("{}", "missing required parameter(s): expression"),
        ('{"expression": 42}', "must be a string"),
        ('{"expression": "1", "x": 1}', "unknown parameter"),
        ('{"expression": "' + "1" * 30_000 + '"}', "too long"),
        ('{"expression": "1/0"}', "division by zero"),
    ],
)
async def test_bad_calls_become_failed_results(arguments, said):
    result = await registry().call("calculator", arguments)
    assert not result.ok and result.content.startswith("Error: ") and said in result.content


async def test_unknown_tool_is_a_failed_result():
    result = await registry().call("teleport", "{}")
    assert not result.ok and "Unknown tool" in result.content and "calculator" in result.content


async def test_empty_arguments_mean_none():
    result = await registry().call("current_time", "")
    assert result.ok and json.loads(result.content)["timezone"] == "UTC"


async def test_a_crashing_tool_becomes_a_short_result():
    async def crash(arguments: dict) -> str:
        raise RuntimeError("secret internals at http://10.0.0.1:6379")

    result = await registry(tool("crash", crash)).call("crash", "")
    assert not result.ok
    assert result.content == "Error: the tool crash failed (RuntimeError)."


async def test_a_slow_tool_times_out():
    async def sleepy(arguments: dict) -> str:
        await asyncio.sleep(5)
        return "late"

    started = time.monotonic()
    result = await registry(tool("sleepy", sleepy, timeout_s=0.2)).call("sleepy", "")
    assert not result.ok and "did not finish within 0.2 s" in result.content
    assert time.monotonic() - started < 1 and 150 <= result.duration_ms < 1000


async def test_results_are_capped():
    async def flood(arguments: dict) -> str:
        return "x" * 50_000

    result = await registry(tool("flood", flood)).call("flood", "")
    assert result.ok and len(result.content) == MAX_RESULT_CHARS
    assert result.content.endswith(f"[truncated: {MAX_RESULT_CHARS} of 50000 characters shown]")
    assert cap("short") == "short"


async def test_a_non_text_result_is_a_failed_result():
    async def number(arguments: dict) -> str:
        return 42  # type: ignore[return-value]

    result = await registry(tool("number", number)).call("number", "")
    assert not result.ok and "TypeError" in result.content


async def test_cancellation_propagates_and_stops_the_tool():
    stopped = asyncio.Event()

    async def long(arguments: dict) -> str:
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()
        return "never"

    task = asyncio.ensure_future(registry(tool("long", long, timeout_s=60)).call("long", ""))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set()


# ---- AMap tools against the fake AMap server ---------------------------------------------------


@pytest.fixture(scope="module")
def amap_upstream():
    with FakeAMap(api_key=KEY) as server:
        yield server


@pytest.fixture
def amap(amap_upstream):
    amap_upstream.reset()
    return amap_upstream


def geo(server: FakeAMap, key: str = KEY, **env: str) -> ToolRegistry:
    settings = load_settings({"AMAP_API_KEY": key, "AMAP_BASE_URL": server.url, **env})
    return ToolRegistry(geo_tools(settings))


def assert_no_key(text: str) -> None:
    assert KEY not in text and KEY[:12] not in text


def test_no_key_no_geo_tools():
    assert geo_tools(load_settings({})) == []
    assert geo_tools(load_settings({"AMAP_API_KEY": "  "})) == []


async def test_geo_tools_are_grouped_and_described(amap):
    tools = geo(amap)
    assert tools.names() == ["get_weather", "search_poi", "geocode"]
    assert {tools.get(name).group for name in tools.names()} == {"geo"}  # type: ignore[union-attr]


async def test_live_weather(amap):
    result = await geo(amap).call("get_weather", '{"city": "北京"}')
    assert result.ok, result.content
    weather = json.loads(result.content)
    assert weather["city"] == "北京市" and weather["weather"] == "晴"
    assert weather["temperature_c"] == "21" and weather["humidity_percent"] == "30"
    request = amap.requests[-1]
    assert request.path == "/v3/weather/weatherInfo"
    assert request.params["key"] == KEY and request.params["city"] == "北京"
    assert request.params["extensions"] == "base"
    assert_no_key(result.content)


async def test_forecast_weather(amap):
    result = await geo(amap).call("get_weather", '{"city": "330100", "forecast": true}')
    assert result.ok, result.content
    forecast = json.loads(result.content)
    assert forecast["city"] == "杭州市" and len(forecast["days"]) == 4
    assert forecast["days"][0] == {
        "date": "2026-05-01",
        "week": "5",
        "day_weather": "多云",
        "night_weather": "晴",
        "day_temp_c": "25",
        "night_temp_c": "13",
        "day_wind": "东",
        "night_wind": "东",
        "day_power": "1-3",
        "night_power": "1-3",
    }
    assert amap.requests[-1].params["extensions"] == "all"


async def test_weather_for_an_unknown_city_says_what_to_send(amap):
    tools = geo(amap)
    for arguments in ('{"city": "Atlantis"}', '{"city": "Atlantis", "forecast": true}'):
        result = await tools.call("get_weather", arguments)
        assert not result.ok and "no weather for 'Atlantis'" in result.content


async def test_poi_search(amap):
    result = await geo(amap).call("search_poi", '{"keywords": "咖啡", "city": "北京"}')
    assert result.ok, result.content
    found = json.loads(result.content)
    assert found["count"] == 25 and len(found["pois"]) == 10
    first, second, third = found["pois"][:3]
    assert first == {
        "name": "咖啡1号店",
        "address": "示范路1号",
        "type": "餐饮服务;咖啡厅;咖啡厅",
        "location": "116.400001,39.900001",
        "tel": "010-12345678",
        "city": "北京",
        "district": "朝阳区",
    }
    assert second["address"] == "" and third["tel"] == ""  # AMap's [] for "none"
    params = amap.requests[-1].params
    assert (
        params["keywords"] == "咖啡" and params["city"] == "北京" and params["citylimit"] == "true"
    )
    assert params["offset"] == "10"


async def test_poi_search_without_city_and_with_no_hits(amap):
    tools = geo(amap)
    result = await tools.call("search_poi", '{"keywords": "咖啡"}')
    assert result.ok and "city" not in amap.requests[-1].params
    result = await tools.call("search_poi", '{"keywords": "nothing"}')
    assert not result.ok and "no places" in result.content


async def test_geocode(amap):
    result = await geo(amap).call("geocode", '{"address": "北京市朝阳区阜通东大街6号"}')
    assert result.ok, result.content
    found = json.loads(result.content)["results"][0]
    assert found["location"] == "116.480881,39.989410" and found["adcode"] == "110105"
    assert found["district"] == "朝阳区" and found["level"] == "门牌号"
    result = await geo(amap).call("geocode", '{"address": "nowhere land"}')
    assert not result.ok and "could not locate" in result.content


@pytest.mark.parametrize(
    "infocode, said",
    [
        ("10001", "INVALID_USER_KEY"),
        ("10002", "SERVICE_NOT_AVAILABLE"),
        ("10003", "DAILY_QUERY_OVER_LIMIT"),
        ("10004", "ACCESS_TOO_FREQUENT"),
        ("10005", "INVALID_USER_IP"),
        ("10009", "USERKEY_PLAT_NOMATCH"),
        ("10010", "IP_QUERY_OVER_LIMIT"),
        ("10044", "USER_DAILY_QUERY_OVER_LIMIT"),
        ("20000", "INVALID_PARAMS"),
        ("20001", "MISSING_REQUIRED_PARAMS"),
        ("20003", "UNKNOWN_ERROR"),
    ],
)
async def test_amap_errors_become_clear_results(amap, infocode, said):
    amap.fail(infocode)
    result = await geo(amap).call("get_weather", '{"city": "北京"}')
    assert not result.ok and said in result.content, result.content
    assert result.content.startswith("Error: AMap")
    assert_no_key(result.content)


async def test_a_wrong_key_is_refused_by_amap_and_never_shown(amap):
    wrong = "wrongkey0123456789abcdef0123456789"
    result = await geo(amap, key=wrong).call("search_poi", '{"keywords": "咖啡"}')
    assert (
        not result.ok and "INVALID_USER_KEY" in result.content and "AMAP_API_KEY" in result.content
    )
    assert wrong not in result.content and amap.requests[-1].params["key"] == wrong


async def test_an_unknown_infocode_keeps_amaps_words_without_the_key(amap):
    amap.fail("29999")
    tools = geo(amap)
    result = await tools.call("get_weather", '{"city": "北京"}')
    assert not result.ok and "UNKNOWN (infocode 29999)" in result.content


async def test_a_slow_amap_gives_a_timeout_result(amap):
    amap.slow(2.0)
    amap_client = AMap(KEY, amap.url, timeout_s=0.3)
    tools = ToolRegistry(amap_tools(amap_client))
    started = time.monotonic()
    result = await tools.call("get_weather", '{"city": "北京"}')
    await amap_client.aclose()
    assert not result.ok and "did not answer within 0.3 s" in result.content
    assert time.monotonic() - started < 1.5


async def test_the_tool_timeout_bounds_a_slow_amap_too(amap):
    amap.slow(2.0)
    amap_client = AMap(KEY, amap.url, timeout_s=5)
    tools = ToolRegistry(amap_tools(amap_client, timeout_s=0.3))
    result = await tools.call("geocode", '{"address": "北京"}')
    await amap_client.aclose()
    assert not result.ok and "did not finish within 0.3 s" in result.content


async def test_amap_down_is_a_network_error_result(amap):
    closed = FakeAMap(api_key=KEY)
    url = closed.url
    closed._server.server_close()  # the port is free again: nothing listens
    result = await ToolRegistry(amap_tools(AMap(KEY, url, timeout_s=1))).call(
        "get_weather", '{"city": "北京"}'
    )
    assert not result.ok and "could not reach AMap" in result.content
    assert url not in result.content


async def test_arguments_are_checked_before_amap_is_asked(amap):
    tools = geo(amap)
    for name, arguments, said in [
        ("get_weather", '{"city": ""}', "city must not be empty"),
        ("get_weather", '{"city": "' + "x" * 200 + '"}', "too long"),
        ("search_poi", '{"city": "北京"}', "missing required parameter(s): keywords"),
        ("geocode", '{"address": 1}', "must be a string"),
    ]:
        result = await tools.call(name, arguments)
        assert not result.ok and said in result.content, result.content
    assert amap.requests == []


def test_settings_hide_the_key():
    settings = load_settings(
        {"AMAP_API_KEY": KEY, "TOOLS": "calculator, get_weather", "MAX_TOOL_ROUNDS": "3"}
    )
    assert KEY not in repr(settings)
    assert settings.tools == "calculator,get_weather" and settings.max_tool_rounds == 3
    assert settings.amap_base_url == "https://restapi.amap.com"
    defaults = load_settings({})
    assert (defaults.tools, defaults.max_tool_rounds, defaults.amap_api_key) == ("", 5, None)
