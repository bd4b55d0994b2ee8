"""Logging as one JSON object per line, for log shippers (Loki, CloudWatch, Datadog, jq).

Every record becomes `{"ts", "level", "logger", "message", ...}`. The ids that tie a line to
the API (`task_id`, `event_id`, `delivery_id`, `subscription_id`, `job_id`) are top-level fields:
taken from `extra=` where a call passes them, else picked out of `name=value` pairs in the
message, so existing calls such as `log.info("submitted task_id=%s", ...)` get them for free.

Secrets never reach the output: callback URL tokens (a credential for that task), `whsec_`
signing secrets, bearer keys and the values of query parameters named `key`, `api_key`, `apikey`,
`token`, `access_token` or `secret` are masked in every line, including uvicorn's access log. A
parameter is recognised by its decoded name, in any case: `?%6Bey=` is `?key=` to the server, so
it is masked too.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from typing import Any
from urllib.parse import unquote_plus

import orjson

_ID_IN_MESSAGE = re.compile(r"\b(task_id|event_id|delivery_id|subscription_id|job_id)=([A-Za-z0-9_\-]+)")
_REDACTIONS = (
    (re.compile(r"(/callbacks/[a-z]+/[^/\s]+/)[^\s\"'?]+"), r"\1[redacted]"),
    (re.compile(r"whsec_[A-Za-z0-9+/=_\-]+"), "whsec_[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\1[redacted]"),
)
_QUERY_PARAM = re.compile(r"([?&;])([^=&;\s\"'#]+)=([^&;\s\"'#]*)")
_SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "secret"})
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


# One cheap search first: most lines hold none of these, and skip the regexes.
_HINTS = re.compile(r"/callbacks/|whsec_|earer|EARER|[?&;]")


def _decoded(name: str) -> str:
    # Decoded until it stops changing: a client may have encoded it twice, and a proxy on the way
    # may decode once more than we do.
    for _ in range(4):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower()


def _mask_param(match: re.Match[str]) -> str:
    separator, name, _value = match.groups()
    return f"{separator}{name}=[redacted]" if _decoded(name) in _SECRET_PARAMS else match.group()


def redact(text: str) -> str:
    if _HINTS.search(text) is None:
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return _QUERY_PARAM.sub(_mask_param, text)


class JsonFormatter(logging.Formatter):
    """One line per record. A busy web logs a line per task event (the callback receiver's
    hot path), so the fixed parts are cheap: the timestamp's second is formatted once per second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if "_id=" in message:
            for name, value in _ID_IN_MESSAGE.findall(message):
                line.setdefault(name, value)
        fields = record.__dict__
        for name in fields.keys() - _STANDARD:
            if not name.startswith("_"):
                value = fields[name]
                line[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact("".join(traceback.format_exception(*record.exc_info)))
        return orjson.dumps(line, default=str).decode()


class WithoutCallbackAccess(logging.Filter):
    """For uvicorn's access log: drops the lines of provider callbacks, which log their own line
    (the callback receivers: the task, and what the callback came to). A second line per
    callback, and the busiest route's, would double the logging's share of its CPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, HTTP version, status).
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 2 and str(args[2]).startswith("/callbacks/"))


def configure_logging(level: int = logging.INFO) -> None:
    """Send every record of this process, as JSON lines, to stderr (replaces other root handlers).

    Records skip what our lines never show (the logging HOWTO's "Optimization"): the caller's
    file and line, found by walking the stack, and the thread and process names: together a
    third of a line's cost."""
    logging._srcfile = None  # documented: skips the stack walk
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
