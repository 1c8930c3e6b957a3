"""The offline built-in tools (issue 16): `calculator` and `current_time`.

`calculator` evaluates arithmetic by walking Python's `ast` with a whitelist: numbers,
+ - * / // % **, unary + -, parentheses, a few `math` functions and constants. Nothing is
ever passed to eval/exec, names and attributes outside the whitelist are refused, and the
work is bounded (input length, exponent size, result magnitude, factorial argument), so a
model (or a user steering it) cannot make the server compute for minutes or allocate a
gigabyte-long integer.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tools import Tool, ToolError

MAX_EXPRESSION_CHARS = 300
MAX_DIGITS = 300  # |result| < 10**300 for every step (floats overflow near 1.8e308)
MAX_MAGNITUDE = 10**MAX_DIGITS
MAX_FACTORIAL = 170  # 170! is the largest that fits a float
MAX_DEPTH = 50  # nesting of the expression tree

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: float) -> float:
    if n != int(n) or n < 0:
        raise ToolError("factorial needs a whole number ≥ 0.")
    if n > MAX_FACTORIAL:
        raise ToolError(f"factorial is limited to {MAX_FACTORIAL}.")
    return math.factorial(int(n))


def _round(x: float, digits: float = 0) -> float:
    return round(x, int(digits))


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "log": math.log,  # log(x) natural, log(x, base)
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "factorial": _factorial,
    "min": min,
    "max": max,
}


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression, or ToolError saying what is not allowed."""
    text = expression.strip()
    if not text:
        raise ToolError("the expression is empty.")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is too long (at most {MAX_EXPRESSION_CHARS} characters).")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise ToolError(
            "the expression is not valid arithmetic (use numbers, + - * / ** ( ))."
        ) from None
    return _eval(tree.body, 0)


def _eval(node: ast.AST, depth: int) -> float:
    if depth > MAX_DEPTH:
        raise ToolError("the expression is nested too deeply.")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError("only numbers are allowed as values.")
        return _bounded(node.value)
    if isinstance(node, ast.Name):
        if node.id not in _CONSTANTS:
            raise ToolError(f"unknown name {node.id!r} (constants: {', '.join(_CONSTANTS)}).")
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        return _binary(node.op, left, right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("^ is not a power here: use ** (2 ** 10).")
    if isinstance(node, ast.Call):
        return _call(node, depth)
    raise ToolError(f"{type(node).__name__} is not allowed: only arithmetic and math functions.")


def _binary(op: ast.operator, left: float, right: float) -> float:
    if isinstance(op, ast.Pow):
        _check_power(left, right)
    try:
        return _bounded(_BINARY[type(op)](left, right))
    except ZeroDivisionError:
        raise ToolError("division by zero.") from None
    except OverflowError:
        raise ToolError("the result is too large.") from None


def _check_power(base: float, exponent: float) -> None:
    """Refuse a power whose result would pass the bound before computing it: 9 ** 10**8
    would otherwise take the CPU for minutes to build a 95-million-digit integer."""
    if abs(base) <= 1 or exponent <= 0:
        return
    if exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise ToolError(f"the result is too large (limit: about 1e{MAX_DIGITS}).")


def _call(node: ast.Call, depth: int) -> float:
    if not isinstance(node.func, ast.Name):  # math.sqrt, (lambda: 1)(), "".join ...
        raise ToolError("only the listed functions may be called, by name (sqrt(2)).")
    function = _FUNCTIONS.get(node.func.id)
    if function is None:
        raise ToolError(f"unknown function {node.func.id!r} (allowed: {', '.join(_FUNCTIONS)}).")
    if node.keywords or len(node.args) > 10:
        raise ToolError("functions take plain arguments only (round(2.5, 1)).")
    args = [_eval(arg, depth + 1) for arg in node.args]
    try:
        return _bounded(function(*args))
    except ToolError:
        raise
    except TypeError:
        raise ToolError(f"wrong number of arguments for {node.func.id}.") from None
    except ZeroDivisionError:
        raise ToolError("division by zero.") from None
    except OverflowError:
        raise ToolError("the result is too large.") from None
    except ValueError:
        raise ToolError(f"{node.func.id} is not defined for these values.") from None


def _bounded(value: float) -> float:
    if not isinstance(value, int | float):  # (-8) ** 0.5 is complex in Python
        raise ToolError("the result is not a real number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number.")
    if abs(value) >= MAX_MAGNITUDE:
        raise ToolError(f"the result is too large (limit: about 1e{MAX_DIGITS}).")
    return value


def format_number(value: float) -> str:
    """Integers exactly; floats to 12 significant digits, so 0.1 + 0.2 reads 0.3."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


async def calculator(arguments: dict) -> str:
    expression = str(arguments.get("expression", ""))
    return format_number(evaluate(expression))


def now_in(timezone: str = "", now: datetime | None = None) -> dict:
    """The time in an IANA zone ("" = UTC) as the facts a model needs."""
    name = timezone.strip() or "UTC"
    if len(name) > 64:
        raise ToolError("the time zone name is too long.")
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(
            f"unknown time zone {name[:64]!r}: use an IANA name such as Asia/Shanghai, "
            "Europe/London or UTC."
        ) from None
    local = (now or datetime.now(UTC)).astimezone(zone)
    return {
        "timezone": name,
        "iso": local.isoformat(timespec="seconds"),
        "weekday": local.strftime("%A"),
        "utc_offset": local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:],
    }


async def current_time(arguments: dict) -> str:
    return json.dumps(now_in(str(arguments.get("timezone", ""))), ensure_ascii=False)


CALCULATOR = Tool(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression exactly. Supports + - * / // % ** and parentheses, "
        f"the constants {', '.join(_CONSTANTS)}, and the functions {', '.join(_FUNCTIONS)}. "
        "Use it for any calculation instead of doing it in your head."
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "e.g. (3.5 + 2) * 4 ** 2 / sqrt(2)",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    run=calculator,
    timeout_s=5.0,
)

CURRENT_TIME = Tool(
    name="current_time",
    description="The current date and time (ISO 8601) in an IANA time zone; UTC when empty.",
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA zone such as Asia/Shanghai or America/New_York; empty = UTC",
            }
        },
        "additionalProperties": False,
    },
    run=current_time,
    timeout_s=5.0,
)


def builtin_tools() -> list[Tool]:
    """The offline tools: always available, no key, no network."""
    return [CALCULATOR, CURRENT_TIME]
