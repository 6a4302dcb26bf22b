"""The Python client of the llmusage sidecar.

A drop-in replacement for the old ``app/services/llm_usage_tracker.py``::

    from llmusage import llm_usage_tracker

    await llm_usage_tracker.log_llm_call(
        user_id=user_id,
        model="llama-3.1-70b-versatile",
        tokens_used=response.usage.total_tokens,
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        metadata={"provider": "groq"},
    )
    limit_info = await llm_usage_tracker.check_rate_limit(user_id=user_id, limit_type="minute")

and, beyond the old service, one block that checks the quota before a
call, times it and records it::

    async with llm_usage_tracker.call(user_id, "gpt-4o", estimate=800) as call:
        response = await openai_client.chat.completions.create(...)
        call.usage(response.usage)

``call.usage(raw)`` of an SDK's ``with_raw_response`` answer also sends the
provider's own rate-limit headers, for the sidecar's
``llm_provider_ratelimit_*`` gauges (see :meth:`Call.provider_headers`).

Standard library only (Python 3.9+), in this one file: copy it next to your
code or ``pip install ./clients/python``. Configuration comes from the
environment: ``LLMUSAGE_URL`` (default ``http://127.0.0.1:9470``, or
``unix:/path/to/api.sock``), ``LLMUSAGE_TOKEN`` or ``LLMUSAGE_TOKEN_FILE``
(the sidecar's ``--auth-token-file``).

Every async method runs its HTTP request on a small thread pool of its own
over persistent connections, so the event loop never blocks; each has a
synchronous twin (``log_llm_call_sync``...) for code without one. A record
the sidecar could not take (unreachable, ``503``) waits in a bounded
in-memory buffer and is retried in the background with the same
``request_id``, so that the sidecar stores it once; one that cannot be
delivered is reported with ``logging.error`` (and the ``on_lost``
callback), never dropped silently.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import datetime as _dt
import decimal
import functools
import hashlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import weakref
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple, Union

__version__ = "0.1.0"

__all__ = [
    "LLMUsageTracker",
    "llm_usage_tracker",
    "Call",
    "usage_fields",
    "key_fingerprint",
    "provider_ratelimit_headers",
    "LLMUsageError",
    "RateLimited",
    "InvalidRequest",
    "SidecarUnavailable",
]

logger = logging.getLogger("llmusage")

DEFAULT_URL = "http://127.0.0.1:9470"

#: An estimate for :meth:`LLMUsageTracker.call`: a token count, or a mapping
#: with ``prompt_tokens`` and ``max_tokens`` (and optionally ``tokens``).
Estimate = Union[int, Mapping[str, int]]

#: Called with the records that could not be delivered and the reason.
LostCallback = Callable[[List[Dict[str, Any]], str], None]


class LLMUsageError(Exception):
    """An answer of the sidecar that is not what was asked for.

    ``status`` is the HTTP status (``None`` when the sidecar could not be
    reached) and ``answer`` its JSON body.
    """

    def __init__(self, message: str, status: Optional[int] = None, answer: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer if answer is not None else {}


class RateLimited(LLMUsageError):
    """Raised by :meth:`LLMUsageTracker.call` when the quota check says no.

    ``retry_after`` is how many seconds to wait (the sidecar's
    ``Retry-After``); ``limits`` the user's buckets as the check saw them.
    """

    def __init__(self, message: str, retry_after: float, answer: Dict[str, Any]) -> None:
        super().__init__(message, 429, answer)
        self.retry_after = retry_after
        self.limits: List[Dict[str, Any]] = list(answer.get("limits") or [])


class InvalidRequest(LLMUsageError, ValueError):
    """The sidecar refused a record or a query as invalid (``400``, or a
    limit type it does not know). ``details`` are the sidecar's, one per
    invalid field; ``fields`` their names."""

    @property
    def details(self) -> List[Dict[str, Any]]:
        return list(self.answer.get("details") or [])

    @property
    def fields(self) -> List[str]:
        return [d.get("field", "") for d in self.details]


class SidecarUnavailable(LLMUsageError, ConnectionError):
    """The sidecar could not be reached or answered ``503`` to a check or a
    read (a record is buffered and retried instead). ``retry_after`` is the
    sidecar's ``Retry-After`` in seconds, ``None`` when it gave none."""

    def __init__(self, message: str, status: Optional[int] = None, answer: Optional[Dict[str, Any]] = None,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message, status, answer)
        self.retry_after = retry_after


class LLMUsageTracker:
    """The client of one sidecar.

    Every argument defaults to the environment, read at the first request
    (so that the module-level :data:`llm_usage_tracker` may be imported
    before the environment is set):

    - ``url``: ``LLMUSAGE_URL``, else ``http://127.0.0.1:9470``; ``http://``,
      ``https://``, ``host:port`` or ``unix:/path/to/socket``.
    - ``token``: ``LLMUSAGE_TOKEN``, else the content of the file
      ``LLMUSAGE_TOKEN_FILE`` (reread when it changes, as a mounted
      Kubernetes Secret does), else none. Sent as
      ``Authorization: Bearer <token>``, as ``--auth-token-file`` requires.

    ``timeout`` bounds each request in seconds, ``pool_size`` the threads
    (and kept-alive connections) of the async methods. ``buffer_size``
    bounds the records kept for retry while the sidecar cannot take them;
    ``on_lost(records, reason)`` is called (besides ``logging.error``) with
    records given up on: the buffer was full, the sidecar refused them on
    retry, or they were still buffered at :meth:`close` or at exit.
    ``exit_timeout`` is how long the interpreter's exit waits for the
    buffer to drain.

    ``fail_open`` (default ``True``): when the sidecar cannot be reached at
    all (refused, reset, timed out), :meth:`call` runs the block unchecked
    and :meth:`check_rate_limit` answers ``can_call: True`` with no limit,
    each with a warning (at most one a minute), so that an outage of the
    sidecar never takes the application out of service; the records go to
    the retry buffer. A sidecar that answers ``503`` (e.g.
    ``--redis-fail-mode=closed``) has decided: that raises
    :class:`SidecarUnavailable` either way. ``fail_open=False`` raises it
    for an unreachable sidecar too.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 5.0,
        pool_size: int = 4,
        buffer_size: int = 10000,
        on_lost: Optional[LostCallback] = None,
        exit_timeout: float = 5.0,
        fail_open: bool = True,
    ) -> None:
        self._url = url
        self._token = token
        self._timeout = timeout
        self._pool_size = max(1, pool_size)
        self._exit_timeout = exit_timeout
        self._fail_open = fail_open
        self._warned_at: Optional[float] = None
        self._lock = threading.Lock()
        self._transport: Optional[_Transport] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._outbox = _Outbox(self._post_batch, buffer_size, on_lost)
        self._closed = False  # refuses new requests; the buffer still drains
        self._shut = False  # the buffer too is done: no connection may be opened
        _trackers.add(self)

    # -- the seed's API -----------------------------------------------------

    async def log_llm_call(
        self,
        user_id: Any,
        model: str,
        tokens_used: Optional[int] = None,
        prompt_tokens: Optional[int] = None,
        completion_tokens: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        provider: Optional[str] = None,
        latency_ms: Optional[float] = None,
        status: Optional[str] = None,
        success: Optional[bool] = None,
        error_type: Optional[str] = None,
        request_id: Optional[str] = None,
        cached_tokens: Optional[int] = None,
        reasoning_tokens: Optional[int] = None,
        cache_write_tokens: Optional[int] = None,
        cost_usd: Optional[Union[float, int, decimal.Decimal]] = None,
        timestamp: Optional[Union[_dt.datetime, str]] = None,
        team_id: Any = None,
        provider_ratelimit: Optional[Mapping[str, Any]] = None,
    ) -> str:
        """Record one LLM call, as the seed's ``log_llm_call`` did.

        Fields left ``None`` are not sent (the sidecar then derives them:
        ``tokens_used`` is ``prompt_tokens + completion_tokens``, the
        provider comes from ``metadata["provider"]`` or the model name).
        ``team_id`` (optional) is the team the call is for, validated like
        ``user_id``. ``provider_ratelimit`` is the provider's own quota as
        its answer said (``{"headers": provider_ratelimit_headers(h),
        "key": key_fingerprint(api_key)}``, or the figures), for the
        sidecar's gauges; it is not stored.
        ``success=False`` is ``status="error"``. A naive ``timestamp`` is
        taken as UTC. Returns the record's ``request_id`` (generated when
        not given), which makes a retry store it once.

        Raises :class:`InvalidRequest` (a ``ValueError``) naming the
        invalid fields when the sidecar refuses the record; a sidecar that
        cannot take it now gets it again later from the buffer.
        """
        rec = _record(user_id, model, tokens_used, prompt_tokens, completion_tokens, metadata, provider, latency_ms,
                      status, success, error_type, request_id, cached_tokens, reasoning_tokens, cache_write_tokens,
                      cost_usd, timestamp, team_id, provider_ratelimit)
        return await self._in_thread(self._send_record, rec)

    async def check_rate_limit(self, user_id: Any, limit_type: str = "minute", *, team_id: Any = None) -> Dict[str, Any]:
        """The seed's answer for one limit type (``second``, ``minute``,
        ``hour``, ``day``): ``{"can_call", "limit_type", "limit", "used",
        "remaining", "reset_at"}``, consuming nothing. ``limit``, ``used``,
        ``remaining`` and ``reset_at`` are ``None`` when no rule limits the
        user. Raises :class:`InvalidRequest` for an unknown limit type and
        :class:`SidecarUnavailable` when the sidecar answers ``503`` (or is
        unreachable, with ``fail_open=False``; with the default, an
        unreachable sidecar answers ``can_call: True`` and no limit).
        ``team_id`` is sent along as ``?team_id=``, for the rules scoped
        by team."""
        return await self._in_thread(functools.partial(self.check_rate_limit_sync, user_id, limit_type, team_id=team_id))

    async def get_rate_limits(self, user_id: Any, *, team_id: Any = None) -> Dict[str, Dict[str, Any]]:
        """:meth:`check_rate_limit` for every limit type, keyed by type."""
        return await self._in_thread(functools.partial(self.get_rate_limits_sync, user_id, team_id=team_id))

    async def get_usage_stats(self, user_id: Any = None, days: int = 30, *, team_id: Any = None) -> Dict[str, Any]:
        """Totals of the last ``days`` days (1 to 366) of one user, or of
        everyone when ``user_id`` is ``None``, of one team's calls with
        ``team_id``: ``total_calls``, ``total_tokens``, ``prompt_tokens``,
        ``completion_tokens``, ``cost_usd``, ``by_model``, ``by_provider``,
        ``by_team`` (``""`` for the calls without a team), ``by_day``."""
        return await self._in_thread(functools.partial(self.get_usage_stats_sync, user_id, days, team_id=team_id))

    async def get_usage_summary(self, user_id: Any = None) -> Dict[str, Any]:
        """The old usage card: today's calls, tokens and cost, and for a user
        each limit type's ``limit``, ``used``, ``remaining``, ``reset_at``."""
        return await self._in_thread(self.get_usage_summary_sync, user_id)

    async def get_usage_logs(self, user_id: Any = None, limit: int = 50, before: Optional[str] = None,
                             model: Optional[str] = None, provider: Optional[str] = None, *,
                             team_id: Any = None) -> Dict[str, Any]:
        """Stored records, newest first: ``{"logs": [...], "next_cursor": ...}``;
        pass ``next_cursor`` as ``before`` for the next page. ``team_id``
        keeps one team's records."""
        return await self._in_thread(functools.partial(self.get_usage_logs_sync, user_id, limit, before, model, provider,
                                                       team_id=team_id))

    # -- beyond the seed ----------------------------------------------------

    def call(self, user_id: Any, model: str, provider: Optional[str] = None, estimate: Optional[Estimate] = None,
             *, metadata: Optional[Mapping[str, Any]] = None, request_id: Optional[str] = None,
             team_id: Any = None) -> "Call":
        """Check the quota, time the call and record it, in one block::

            async with tracker.call(user_id, "gpt-4o", estimate=800) as call:
                response = await client.chat.completions.create(...)
                call.usage(response.usage)

        ``with`` works the same in synchronous code. Entering checks
        (``POST /v1/check``) and raises :class:`RateLimited` when the user
        is over a limit (an unreachable sidecar lets the block run
        unchecked, with a warning, unless ``fail_open=False``); leaving records the call with the check's
        ``request_id`` (so it is not charged twice), its latency and, if
        the block raised, ``status="error"`` and the exception's class as
        ``error_type``. ``estimate`` is the call's expected tokens, or
        ``{"prompt_tokens": ..., "max_tokens": ...}`` for a budget to
        price it; the record settles the difference. ``team_id`` (optional)
        goes on the check and on the record.
        """
        return Call(self, str(user_id), model, provider, estimate, metadata, request_id,
                    None if team_id is None else str(team_id))

    @property
    def pending(self) -> int:
        """Records waiting in the buffer for the sidecar."""
        return self._outbox.pending

    @property
    def lost(self) -> int:
        """Records given up on since the start (each was reported)."""
        return self._outbox.lost

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Retry the buffered records now and wait until the buffer is empty
        or ``timeout`` seconds passed; tells whether it is empty."""
        return self._outbox.flush(timeout)

    async def aflush(self, timeout: Optional[float] = None) -> bool:
        """:meth:`flush` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Flush (``exit_timeout`` by default), report what is still
        buffered as lost, and close the connections and threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.close(self._exit_timeout if timeout is None else timeout)
        with self._lock:
            self._shut = True
            executor, self._executor = self._executor, None
            transport, self._transport = self._transport, None
        if executor is not None:
            executor.shutdown(wait=False)
        if transport is not None:
            transport.close()

    async def aclose(self, timeout: Optional[float] = None) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)

    # -- synchronous twins --------------------------------------------------

    def log_llm_call_sync(
        self,
        user_id: Any,
        model: str,
        tokens_used: Optional[int] = None,
        prompt_tokens: Optional[int] = None,
        completion_tokens: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        **fields: Any,
    ) -> str:
        """:meth:`log_llm_call` for synchronous code, with the same arguments."""
        _check_fields(fields)
        rec = _record(user_id, model, tokens_used, prompt_tokens, completion_tokens, metadata, **fields)
        return self._send_record(rec)

    def check_rate_limit_sync(self, user_id: Any, limit_type: str = "minute", *, team_id: Any = None) -> Dict[str, Any]:
        """:meth:`check_rate_limit` for synchronous code."""
        path = "/api/llm/usage/rate-limit/" + urllib.parse.quote(str(limit_type), safe="")
        what = "cannot check the %s rate limit" % limit_type
        try:
            return self._get(path, {"user_id": user_id, "team_id": team_id}, what)
        except SidecarUnavailable as err:
            if err.status is not None or not self._fail_open:
                raise
            self._warn_unreachable(err)
            return {"can_call": True, "limit_type": limit_type, "limit": None, "used": None, "remaining": None,
                    "reset_at": None}

    def get_rate_limits_sync(self, user_id: Any, *, team_id: Any = None) -> Dict[str, Dict[str, Any]]:
        """:meth:`get_rate_limits` for synchronous code."""
        return self._get("/api/llm/usage/rate-limits", {"user_id": user_id, "team_id": team_id},
                         "cannot read the rate limits")

    def get_usage_stats_sync(self, user_id: Any = None, days: int = 30, *, team_id: Any = None) -> Dict[str, Any]:
        """:meth:`get_usage_stats` for synchronous code."""
        return self._get("/api/llm/usage/stats", {"days": days, "user_id": user_id, "team_id": team_id},
                         "cannot read the usage stats")

    def get_usage_summary_sync(self, user_id: Any = None) -> Dict[str, Any]:
        """:meth:`get_usage_summary` for synchronous code."""
        return self._get("/api/llm/usage/summary", {"user_id": user_id}, "cannot read the usage summary")

    def get_usage_logs_sync(self, user_id: Any = None, limit: int = 50, before: Optional[str] = None,
                            model: Optional[str] = None, provider: Optional[str] = None, *,
                            team_id: Any = None) -> Dict[str, Any]:
        """:meth:`get_usage_logs` for synchronous code."""
        query = {"limit": limit, "before": before, "user_id": user_id, "team_id": team_id, "model": model,
                 "provider": provider}
        return self._get("/api/llm/usage/logs", query, "cannot read the usage logs")

    # -- internals ----------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool(), functools.partial(fn, *args))

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise LLMUsageError("cannot use a closed LLMUsageTracker")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(self._pool_size, thread_name_prefix="llmusage")
            return self._executor

    def _http(self, draining: bool = False) -> _Transport:
        """The transport; draining (the retry buffer's) works while close()
        flushes, after new requests are refused."""
        with self._lock:
            if self._shut or (self._closed and not draining):
                raise LLMUsageError("cannot use a closed LLMUsageTracker")
            if self._transport is None:
                url = self._url or os.environ.get("LLMUSAGE_URL") or DEFAULT_URL
                self._transport = _Transport(url, _TokenSource(self._token), self._timeout, self._pool_size)
            return self._transport

    def _send_record(self, rec: Dict[str, Any]) -> str:
        """Posts one record; buffers it when the sidecar cannot take it now."""
        item = _Pending(rec)
        if self._outbox.pending:
            # Behind records the sidecar did not take yet: keeps the order,
            # and a sidecar known to be down costs the caller no timeout.
            self._outbox.add(item)
            return rec["request_id"]
        try:
            status, headers, answer = self._http().request("POST", "/v1/calls", item.body)
        except _Unreachable as err:
            self._outbox.add(item, str(err))
            return rec["request_id"]
        if status == 202:
            return rec["request_id"]
        if status in _RETRIABLE:
            self._outbox.add(item, _message(answer, status))
            return rec["request_id"]
        raise _error(status, headers, answer, "cannot record the call")

    def _post_batch(self, items: List[_Pending]) -> Tuple[int, Dict[str, Any]]:
        """Posts buffered records as one JSON array (for the retry buffer)."""
        body = b"[" + b",".join(i.body for i in items) + b"]"
        status, _, answer = self._http(draining=True).request("POST", "/v1/calls", body)
        return status, answer

    def _get(self, path: str, query: Mapping[str, Any], what: str) -> Dict[str, Any]:
        q = urllib.parse.urlencode({k: str(v) for k, v in query.items() if v is not None})
        try:
            status, headers, answer = self._http().request("GET", path + ("?" + q if q else ""), None)
        except _Unreachable as err:
            raise SidecarUnavailable("%s: %s" % (what, err)) from err
        if status != 200:
            raise _error(status, headers, answer, what)
        return answer

    def _check(self, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """POST /v1/check; raises RateLimited on 429; None when the sidecar
        is unreachable and the tracker fails open."""
        try:
            status, headers, answer = self._http().request("POST", "/v1/check", _encode(body))
        except _Unreachable as err:
            unavailable = SidecarUnavailable("cannot check the quota: %s" % err)
            if not self._fail_open:
                raise unavailable from err
            self._warn_unreachable(unavailable)
            return None
        if status == 200:
            return answer
        if status == 429:
            retry_after = answer.get("retry_after_seconds") or _retry_after(headers) or 1
            raise RateLimited("cannot call %s for user %s now: over a limit; retry in %ss"
                              % (body["model"], body["user_id"], retry_after), float(retry_after), answer)
        raise _error(status, headers, answer, "cannot check the quota")

    def _warn_unreachable(self, err: Exception) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning("%s; the sidecar is unreachable: calls go on unchecked (fail_open; warned at most "
                           "once a minute)", err)

    def _after_fork_in_child(self) -> None:
        """In a forked child (gunicorn --preload, multiprocessing): the
        parent's threads are gone and its kept-alive sockets are the
        parent's, so start afresh; buffered records stay the parent's."""
        self._lock = threading.Lock()
        self._executor = None
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.forget()
        self._outbox.after_fork_in_child()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # at exit, a report is all that can still be done
            logger.exception("cannot close the llmusage tracker at exit")


class Call:
    """One LLM call inside :meth:`LLMUsageTracker.call`: give it the
    provider's usage with :meth:`usage`; leaving the block records it.

    ``request_id`` is the check's (and the record's), ``check`` the check's
    answer (with ``limits``), ``checked`` whether there was one (``False``
    when the sidecar was unreachable and the tracker fails open),
    ``latency_ms`` is set once the block ends.
    """

    def __init__(self, tracker: LLMUsageTracker, user_id: str, model: str, provider: Optional[str],
                 estimate: Optional[Estimate], metadata: Optional[Mapping[str, Any]],
                 request_id: Optional[str], team_id: Optional[str] = None) -> None:
        self.user_id = user_id
        self.team_id = team_id
        self.model = model
        self.provider = provider
        self.request_id = request_id or _new_request_id()
        self.check: Dict[str, Any] = {}
        self.checked = False
        self.latency_ms: Optional[float] = None
        self._tracker = tracker
        self._estimate = estimate
        self._fields: Dict[str, Any] = {}
        if metadata is not None:
            self._fields["metadata"] = metadata
        self._started: Optional[float] = None
        # When the provider's headers were taken: their relative resets
        # count from then, however late the record reaches the sidecar.
        self._headers_at: Optional[_dt.datetime] = None

    def usage(self, usage: Any) -> None:
        """Take the token counts from the provider's usage object or dict
        (OpenAI, Groq, Anthropic; see :func:`usage_fields`), or from a
        whole response that has one (``response.usage``).

        An SDK's raw response (``client.chat.completions.with_raw_response
        .create(...)``, ``client.messages.with_raw_response.create(...)``)
        gives its usage (``.parse()``) and its rate-limit headers, as
        :meth:`provider_headers` takes them, with the fingerprint of the
        API key of its request.
        """
        if _is_raw_response(usage):
            self._provider_headers_of(usage)
            usage = usage.parse()
        inner = _field(usage, "usage")
        if inner is not None and _field(usage, "prompt_tokens") is None and _field(usage, "input_tokens") is None:
            usage = inner
        self._fields.update(usage_fields(usage))

    def provider_headers(self, headers: Any, *, api_key: Optional[str] = None) -> None:
        """Send the provider's own rate-limit headers of the call's answer
        with its record (``provider_ratelimit``), for the sidecar's
        ``llm_provider_ratelimit_*`` and ``llm_provider_retry_after_seconds``
        gauges, as the proxy reads them. ``headers`` is a mapping (the
        SDK's ``response.headers``) or pairs; only the rate-limit ones are
        sent. ``api_key`` labels the figures with its
        :func:`key_fingerprint`; the key itself never leaves the process.
        """
        picked = provider_ratelimit_headers(headers)
        if not picked:
            return
        pr: Dict[str, Any] = {"headers": picked}
        fp = key_fingerprint(api_key) if api_key else ""
        if fp:
            pr["key"] = fp
        self._fields["provider_ratelimit"] = pr
        self._headers_at = _dt.datetime.now(_dt.timezone.utc)

    def _provider_headers_of(self, obj: Any) -> None:
        """provider_headers of an SDK's raw response, an httpx response or
        an SDK error with one (a 429 says when to retry)."""
        try:
            resp = obj
            if not _is_raw_response(obj) and _field(obj, "headers") is None:
                resp = getattr(obj, "response", None)  # openai.APIStatusError, anthropic.APIStatusError
            headers = getattr(resp, "headers", None)
            if headers is None:
                return
            try:
                request = getattr(resp, "http_request", None) or getattr(resp, "request", None)
            except RuntimeError:  # httpx's Response.request of a response made without one
                request = None
            self.provider_headers(headers, api_key=_api_key(getattr(request, "headers", None)))
        except Exception:  # an object of another shape: the record matters more than its figures
            logger.debug("cannot read the provider's headers of %r", type(obj).__name__, exc_info=True)

    def set(self, **fields: Any) -> None:
        """Set more record fields (``cost_usd``, ``metadata``,
        ``prompt_tokens``...), which win over those of :meth:`usage`."""
        _check_fields(fields)  # refuses unknown names now, not at the end of the block
        self._fields.update(fields)

    def __enter__(self) -> "Call":
        self._checked(self._tracker._check(self._check_body()))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._record(exc_type, self._tracker._send_record, exc)

    async def __aenter__(self) -> "Call":
        self._checked(await self._tracker._in_thread(self._tracker._check, self._check_body()))
        return self

    def _checked(self, check: Optional[Dict[str, Any]]) -> None:
        self.checked = check is not None
        self.check = check or {}
        self._started = time.monotonic()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        send = self._tracker._send_record
        await asyncio.shield(self._tracker._in_thread(self._record, exc_type, send, exc))

    def _check_body(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {"user_id": self.user_id, "model": self.model, "request_id": self.request_id}
        if self.team_id is not None:
            body["team_id"] = self.team_id
        if self.provider:
            body["provider"] = self.provider
        if isinstance(self._estimate, Mapping):
            body.update({k: int(v) for k, v in self._estimate.items() if v is not None})
        elif self._estimate is not None:
            body["tokens"] = int(self._estimate)
        return body

    def _record(self, exc_type: Any, send: Callable[[Dict[str, Any]], str], exc: Any = None) -> None:
        assert self._started is not None
        self.latency_ms = (time.monotonic() - self._started) * 1000
        if exc is not None and "provider_ratelimit" not in self._fields:
            self._provider_headers_of(exc)
        fields = dict(self._fields)
        if self._headers_at is not None and "provider_ratelimit" in fields:
            fields.setdefault("timestamp", self._headers_at)
        fields.setdefault("provider", self.provider)
        fields.setdefault("latency_ms", self.latency_ms)
        fields.setdefault("request_id", self.request_id)
        fields.setdefault("team_id", self.team_id)
        if exc_type is not None:
            fields.setdefault("status", "error")
            fields.setdefault("error_type", exc_type.__name__)
        rec = _record(self.user_id, self.model, **fields)
        try:
            send(rec)
        except LLMUsageError:
            if exc_type is None:
                raise
            # The block's own exception is the one the caller must see.
            logger.exception("cannot record the failed call %s", self.request_id)


def usage_fields(usage: Any) -> Dict[str, int]:
    """The record fields of a provider's usage object or dict.

    - OpenAI and Groq chat completions: ``prompt_tokens``,
      ``completion_tokens``, ``prompt_tokens_details.cached_tokens``,
      ``completion_tokens_details.reasoning_tokens``;
    - OpenAI responses: ``input_tokens`` (cache reads included),
      ``output_tokens``, ``input_tokens_details.cached_tokens``,
      ``output_tokens_details.reasoning_tokens``;
    - Anthropic messages: ``input_tokens`` excludes the cache, so
      ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are
      added to ``prompt_tokens`` and reported as ``cached_tokens`` and
      ``cache_write_tokens``.

    Objects are read by attribute (the SDKs' pydantic models), mappings by
    key. Raises ``TypeError`` when neither shape is there.
    """
    if usage is None:
        raise TypeError("cannot read token counts from None: the response has no usage")
    out: Dict[str, int] = {}
    if _field(usage, "prompt_tokens") is not None or _field(usage, "completion_tokens") is not None:
        out["prompt_tokens"] = _count(usage, "prompt_tokens")
        out["completion_tokens"] = _count(usage, "completion_tokens")
        _put(out, "cached_tokens", _count(_field(usage, "prompt_tokens_details"), "cached_tokens"))
        _put(out, "reasoning_tokens", _count(_field(usage, "completion_tokens_details"), "reasoning_tokens"))
        return out
    if _field(usage, "input_tokens") is not None or _field(usage, "output_tokens") is not None:
        input_details = _field(usage, "input_tokens_details")
        if input_details is not None:  # OpenAI's responses API
            out["prompt_tokens"] = _count(usage, "input_tokens")
            out["completion_tokens"] = _count(usage, "output_tokens")
            _put(out, "cached_tokens", _count(input_details, "cached_tokens"))
            _put(out, "reasoning_tokens", _count(_field(usage, "output_tokens_details"), "reasoning_tokens"))
            return out
        reads = _count(usage, "cache_read_input_tokens")
        writes = _count(usage, "cache_creation_input_tokens")
        out["prompt_tokens"] = _count(usage, "input_tokens") + reads + writes
        out["completion_tokens"] = _count(usage, "output_tokens")
        _put(out, "cached_tokens", reads)
        _put(out, "cache_write_tokens", writes)
        return out
    raise TypeError("cannot read token counts from %r: expected OpenAI's prompt_tokens/completion_tokens "
                    "or Anthropic's input_tokens/output_tokens" % (type(usage).__name__,))


# -- the provider's own rate limits ---------------------------------------------

#: Prefixes and names of the providers' rate-limit headers, as the sidecar
#: reads them (OpenAI, Groq, xAI, Mistral, Anthropic; retry-after).
_RATELIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "x-ratelimitbysize-", "ratelimitbysize-")
_RATELIMIT_NAMES = frozenset(("retry-after", "retry-after-ms"))

#: Prefixes the key before hashing, as the sidecar does (provider.KeyFingerprint).
_KEY_FINGERPRINT_DOMAIN = b"llmusage provider key fingerprint v1\x00"


def key_fingerprint(api_key: str) -> str:
    """The sidecar's name of an API key on its dashboards (the ``key``
    label): the first 8 hex digits of SHA-256 over a fixed prefix and the
    key, spaces around it trimmed; ``""`` for no key. The same as the
    proxy computes, and as
    ``printf 'llmusage provider key fingerprint v1\\0%s' "$KEY" | sha256sum | cut -c1-8``.
    """
    key = (api_key or "").strip()
    if not key:
        return ""
    return hashlib.sha256(_KEY_FINGERPRINT_DOMAIN + key.encode()).hexdigest()[:8]


def provider_ratelimit_headers(headers: Any) -> Dict[str, str]:
    """The rate-limit headers of a provider's answer (a mapping such as
    httpx's ``Headers``, or pairs), names lower-cased: what
    ``provider_ratelimit.headers`` of a record takes. Others are left out,
    so that nothing else of the answer goes to the sidecar."""
    items = headers.items() if hasattr(headers, "items") else headers
    out: Dict[str, str] = {}
    for name, value in items:
        n = str(name).strip().lower()
        if n in _RATELIMIT_NAMES or n.startswith(_RATELIMIT_PREFIXES):
            out[n] = str(value)
    return out


def _is_raw_response(obj: Any) -> bool:
    """An openai or anthropic SDK's ``with_raw_response`` answer."""
    return callable(getattr(obj, "parse", None)) and getattr(obj, "headers", None) is not None \
        and not isinstance(obj, Mapping)


def _api_key(headers: Any) -> Optional[str]:
    """The API key of a request's headers: x-api-key (Anthropic) or the
    Authorization bearer token, as the proxy reads them."""
    if headers is None:
        return None
    found: Dict[str, str] = {}
    for name, value in (headers.items() if hasattr(headers, "items") else headers):
        found[str(name).lower()] = str(value)
    key = found.get("x-api-key", "").strip()
    if key:
        return key
    auth = found.get("authorization", "").strip()
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


# -- records ------------------------------------------------------------------

def _check_fields(fields: Mapping[str, Any]) -> None:
    """Refuses keywords that are not record fields, naming the known ones."""
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise TypeError("cannot record unknown field(s) %s: known are %s" % (", ".join(unknown), ", ".join(_FIELDS)))


def _record(user_id: Any, model: str, tokens_used: Optional[int] = None, prompt_tokens: Optional[int] = None,
            completion_tokens: Optional[int] = None, metadata: Optional[Mapping[str, Any]] = None,
            provider: Optional[str] = None, latency_ms: Optional[float] = None, status: Optional[str] = None,
            success: Optional[bool] = None, error_type: Optional[str] = None, request_id: Optional[str] = None,
            cached_tokens: Optional[int] = None, reasoning_tokens: Optional[int] = None,
            cache_write_tokens: Optional[int] = None, cost_usd: Any = None, timestamp: Any = None,
            team_id: Any = None, provider_ratelimit: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The JSON record of one call, with a client-side request_id so that
    every retry of it is stored once."""
    if status is None and success is not None:
        status = "success" if success else "error"
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=_dt.timezone.utc)
        timestamp = timestamp.isoformat()
    if isinstance(cost_usd, decimal.Decimal):
        cost_usd = float(cost_usd)
    rec: Dict[str, Any] = {"user_id": str(user_id), "model": model}
    if team_id is not None:
        rec["team_id"] = str(team_id)
    for name, value in (("provider", provider), ("tokens_used", tokens_used), ("prompt_tokens", prompt_tokens),
                        ("completion_tokens", completion_tokens), ("cached_tokens", cached_tokens),
                        ("reasoning_tokens", reasoning_tokens), ("cache_write_tokens", cache_write_tokens),
                        ("latency_ms", latency_ms), ("status", status), ("error_type", error_type),
                        ("cost_usd", cost_usd), ("timestamp", timestamp)):
        if value is not None:
            rec[name] = value
    if metadata is not None:
        rec["metadata"] = dict(metadata)
    if provider_ratelimit is not None:
        rec["provider_ratelimit"] = dict(provider_ratelimit)
    rec["request_id"] = request_id or _new_request_id()
    return rec


#: The keyword arguments of _record: the record fields a caller may give.
_FIELDS = _record.__code__.co_varnames[2:_record.__code__.co_argcount]


def _new_request_id() -> str:
    """A UUID version 7, as the sidecar makes its own: time-ordered, so the
    database's unique index on request_id grows at one end."""
    ms = time.time_ns() // 1_000_000
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class _Pending:
    """A record waiting to be delivered, encoded once (so that a value
    JSON cannot hold fails the caller at once, not the retry later)."""

    __slots__ = ("record", "body")

    def __init__(self, record: Dict[str, Any]) -> None:
        self.record = record
        try:
            self.body = _encode(record)
        except (TypeError, ValueError) as err:
            raise InvalidRequest("cannot record the call: %s (every field, metadata included, must be JSON)" % err) from err


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, name: str) -> int:
    v = _field(obj, name)
    return 0 if v is None else int(v)


def _put(out: Dict[str, int], name: str, value: int) -> None:
    if value:
        out[name] = value


# -- answers ------------------------------------------------------------------

#: Statuses after which a record is retried: the sidecar (or a proxy in
#: front of it) could not take it now, and nothing was applied.
_RETRIABLE = frozenset((500, 502, 503, 504))


def _message(answer: Dict[str, Any], status: int) -> str:
    return str(answer.get("error") or "HTTP %d" % status)


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None


def _describe(answer: Dict[str, Any], status: int) -> str:
    """The sidecar's error message, with every invalid field it names."""
    message = _message(answer, status)
    details = answer.get("details") or []
    if details:
        message += " (" + "; ".join("%s: %s" % (d.get("field") or "record", d.get("message", "")) for d in details) + ")"
    return message


def _error(status: int, headers: Mapping[str, str], answer: Dict[str, Any], what: str) -> LLMUsageError:
    """The exception for a sidecar's refusal, naming the invalid fields."""
    message = "%s: %s" % (what, _describe(answer, status))
    if status == 400 or (status == 404 and "valid types" in message):
        return InvalidRequest(message, status, answer)
    if status == 503:
        return SidecarUnavailable(message, status, answer, _retry_after(headers))
    return LLMUsageError(message, status, answer)


# -- the retry buffer ---------------------------------------------------------

class _Outbox:
    """Records the sidecar could not take yet, retried in order by a
    background thread with backoff, each batch with the records' own
    request_ids, so that a batch whose answer was lost is stored once."""

    batch = 500  # records per retry: well under the sidecar's 1 MiB body
    first_delay, max_delay = 0.2, 5.0

    def __init__(self, post: Callable[[List[_Pending]], Tuple[int, Dict[str, Any]]], capacity: int,
                 on_lost: Optional[LostCallback]) -> None:
        self._post = post
        self._capacity = max(1, capacity)
        self._on_lost = on_lost
        self._items: Deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._batch = self.batch
        self.lost = 0

    @property
    def pending(self) -> int:
        return len(self._items)

    def add(self, item: _Pending, reason: Optional[str] = None) -> None:
        with self._cond:
            full = len(self._items) >= self._capacity or self._closed
            if not full:
                if not self._items and reason:
                    logger.warning("cannot deliver LLM call records now (%s): buffering them for retry", reason)
                self._items.append(item)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="llmusage-retry", daemon=True)
                    self._thread.start()
        if full:
            why = "the tracker is closed" if self._closed else "the retry buffer is full (%d records)" % self._capacity
            self._lose([item], why)

    def flush(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._items:
                self._wake.set()  # cut the backoff short: the caller asks for it now
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            return True

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        self._wake.set()
        if left:
            self._lose(left, "still buffered when the tracker closed (the sidecar did not take them in time)")

    def after_fork_in_child(self) -> None:
        # The parent's retry thread (and whoever held the lock) is gone;
        # the parent delivers its buffered records itself.
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._thread = None
        self._items = collections.deque()

    def _run(self) -> None:
        delay = self.first_delay
        while True:
            with self._cond:
                if not self._items or self._closed:
                    self._thread = None
                    self._cond.notify_all()
                    return
                items = list(self._items)[: self._batch]
            if self._deliver(items):
                delay = self.first_delay
                continue
            self._wake.wait(delay * random.uniform(0.8, 1.2))
            self._wake.clear()
            delay = min(delay * 2, self.max_delay)

    def _deliver(self, items: List[_Pending]) -> bool:
        """Posts items, the buffer's first; tells whether to go on at once."""
        try:
            status, answer = self._post(items)
        except _Unreachable as err:
            logger.debug("llmusage retry: %s", err)
            return False
        except Exception as err:  # e.g. LLMUSAGE_TOKEN_FILE unreadable: keep the records, try again later
            logger.error("cannot deliver %d buffered LLM call record(s): %s; retrying", len(items), err)
            return False
        if status == 202:
            self._done(items)
            return True
        if status == 400:
            # Nothing was applied: give up on the records named, keep the rest.
            bad = {d.get("index") for d in answer.get("details") or []}
            refused = [it for i, it in enumerate(items) if i in bad] or items
            self._done(refused)
            self._lose(refused, "the sidecar refused them: " + _describe(answer, status))
            return True
        if status == 413 and len(items) > 1:
            self._batch = max(1, len(items) // 2)
            return True
        if status == 413:
            self._done(items)
            self._lose(items, _message(answer, status))
            return True
        if status not in _RETRIABLE:
            logger.error("cannot deliver %d buffered LLM call record(s): %s; retrying",
                         len(self._items), _message(answer, status))
        return False

    def _done(self, items: List[_Pending]) -> None:
        gone = {id(i) for i in items}
        with self._cond:
            self._items = collections.deque(i for i in self._items if id(i) not in gone)
            self._cond.notify_all()

    def _lose(self, items: List[_Pending], reason: str) -> None:
        with self._cond:
            self.lost += len(items)
        ids = ", ".join(i.record.get("request_id", "?") for i in items[:5]) + (", ..." if len(items) > 5 else "")
        logger.error("cannot record %d LLM call(s), %d lost in all: %s (request_id %s)", len(items), self.lost,
                     reason, ids)
        if self._on_lost is not None:
            try:
                self._on_lost([i.record for i in items], reason)
            except Exception:
                logger.exception("the llmusage on_lost callback failed")


# -- HTTP -----------------------------------------------------------------------

class _Unreachable(Exception):
    """The request got no answer: connection refused, reset or timed out."""


class _TokenSource:
    """The token to send: given, LLMUSAGE_TOKEN, or LLMUSAGE_TOKEN_FILE,
    reread when the file changes (a rotated Kubernetes Secret)."""

    def __init__(self, token: Optional[str]) -> None:
        self._token = token if token is not None else os.environ.get("LLMUSAGE_TOKEN") or None
        self._file = None if self._token is not None else os.environ.get("LLMUSAGE_TOKEN_FILE") or None
        self._stamp: Optional[Tuple[int, int]] = None
        self._lock = threading.Lock()

    def get(self) -> Optional[str]:
        if self._file is None:
            return self._token
        try:
            st = os.stat(self._file)
            with self._lock:
                if self._stamp != (st.st_mtime_ns, st.st_size):
                    with open(self._file, encoding="utf-8") as f:
                        self._token = f.read().strip() or None
                    self._stamp = (st.st_mtime_ns, st.st_size)
                return self._token
        except OSError as err:
            raise LLMUsageError("cannot read LLMUSAGE_TOKEN_FILE %s: %s" % (self._file, err)) from err


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the sidecar's --listen-address unix:/path)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport:
    """Kept-alive connections to the sidecar, reused LIFO, at most
    ``idle`` of them kept between requests."""

    def __init__(self, url: str, token: _TokenSource, timeout: float, idle: int) -> None:
        self._token = token
        self._timeout = timeout
        self._idle_max = idle
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._new, self._prefix, self.where = _connector(url, timeout)

    def request(self, method: str, path: str, body: Optional[bytes]) -> Tuple[int, Mapping[str, str], Dict[str, Any]]:
        headers = {"Accept": "application/json", "User-Agent": "llmusage-python/" + __version__}
        if body is not None:
            headers["Content-Type"] = "application/json"
        token = self._token.get()
        if token:
            headers["Authorization"] = "Bearer " + token
        for attempt in (1, 2):
            conn, reused = self._get()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
                conn.close()
                if reused and attempt == 1:
                    continue  # the sidecar had closed this idle connection: nothing was sent to it
                raise _Unreachable("cannot reach the sidecar at %s: %s" % (self.where, err)) from err
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                raise _Unreachable("cannot reach the sidecar at %s: %s" % (self.where, err or type(err).__name__)) from err
            if resp.will_close:
                conn.close()
            else:
                self._put(conn)
            answer_headers = {k.lower(): v for k, v in resp.getheaders()}
            try:
                answer = json.loads(data) if data else {}
            except ValueError:
                answer = {"error": "a non-JSON answer: %r" % data[:200]}
            if not isinstance(answer, dict):
                answer = {"error": "an unexpected answer: %r" % data[:200]}
            return resp.status, answer_headers, answer
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def forget(self) -> None:
        """Closes this process's descriptors of the idle connections without
        touching the lock (a forked child's copy may be held forever); the
        parent's connections stay open."""
        idle, self._idle = self._idle, []
        for c in idle:
            if c.sock is not None:
                c.sock.close()  # close(2) on the child's descriptor only: no shutdown, no TLS close_notify

    def _get(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._idle_max:
                self._idle.append(conn)
                return
        conn.close()


def _connector(url: str, timeout: float) -> Tuple[Callable[[], http.client.HTTPConnection], str, str]:
    """How to open a connection to url, the path prefix, and url for messages."""
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if path.startswith("//"):  # unix:///run/llmusage/api.sock
            path = path[2:]
        if not path:
            raise ValueError("cannot use LLMUSAGE_URL %r: unix: needs a socket path" % url)
        return (lambda: _UnixHTTPConnection(path, timeout)), "", url
    if "://" not in url:
        url = "http://" + url
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("cannot use LLMUSAGE_URL %r: expected http://host:port, https://... or unix:/path" % url)
    host, port = u.hostname, u.port
    prefix = u.path.rstrip("/")
    if u.scheme == "https":
        return (lambda: http.client.HTTPSConnection(host, port, timeout=timeout)), prefix, url
    return (lambda: http.client.HTTPConnection(host, port, timeout=timeout)), prefix, url


# -- exit -------------------------------------------------------------------------

_trackers: "weakref.WeakSet[LLMUsageTracker]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Records still buffered get exit_timeout to go out, then are reported.
    for tracker in list(_trackers):
        tracker._close_at_exit()


def _after_fork_in_child() -> None:
    for tracker in list(_trackers):
        tracker._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


#: The module-level tracker the seed's code imports, configured from the
#: environment at its first request.
llm_usage_tracker = LLMUsageTracker()
