"""Async client for an LLM judge behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
OpenAI, ...), as used by Video-R2's TAR reward.

Why our own retry loop: the ``openai`` client retries inside one call with its own policy and
cannot retry an answer that arrives fine but is unusable (non-JSON where JSON was asked for), so
the ``AsyncOpenAI`` client runs with ``max_retries=0`` and every attempt goes through here:
- bounded concurrency (``asyncio.Semaphore``) so a GRPO batch cannot flood the judge server;
- a total deadline per attempt (``asyncio.wait_for``; the client's own timeout is per read);
- retries with exponential backoff and jitter on timeouts, connection errors, HTTP 408/409/429/5xx,
  malformed responses and unparsable answers; other HTTP errors (401, 404, ...) fail at once;
- a call that finally fails yields None (the reward skips that sample) and is counted.

The event loop lives in a helper thread owned by the client, so the same client serves plain
synchronous trainer code and callers that already run an event loop, and its connection pool
survives across batches. The API key is read from an environment variable (``api_key_env``) and is
never logged; only its variable name appears in messages.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import math
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .registry import RewardConfigError

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429})


class JudgeParseError(Exception):
    """The judge answered, but not in the shape the caller asked for (retried)."""


class MalformedResponseError(Exception):
    """The HTTP body is not a chat completion (an HTML error page from a proxy, ...; retried)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how hard to try. Hashable: one client per distinct config."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 10.0
    max_retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    concurrency: int = 16
    temperature: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.base_url or not self.model:
            raise RewardConfigError("judge needs `base_url` and `model` (the OpenAI-compatible endpoint and served model)")
        if not self.api_key_env:
            raise RewardConfigError("judge `api_key_env` must name an environment variable")
        for name in ("timeout_s", "backoff_s", "backoff_max_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise RewardConfigError(f"judge `{name}` must be a finite number >= 0, got {value!r}")
        if self.timeout_s <= 0:
            raise RewardConfigError(f"judge `timeout_s` must be > 0, got {self.timeout_s!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise RewardConfigError(f"judge `max_retries` must be an int >= 0, got {self.max_retries!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise RewardConfigError(f"judge `concurrency` must be an int >= 1, got {self.concurrency!r}")


@dataclass(frozen=True)
class ChatRequest:
    """One judge call: the system and user messages, and how to turn the answer into a value.

    ``parse`` raises ``JudgeParseError`` for an unusable answer, which is then retried.
    """

    system: str
    user: str
    parse: Callable[[str], Any] = str


@dataclass
class JudgeStats:
    """Cumulative counts for one client (requests = logical calls; attempts include retries)."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failures: int = 0
    reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "failures": self.failures,
            "reasons": dict(self.reasons),
        }


def classify(exc: BaseException) -> tuple[str, bool]:
    """(reason, retryable) for an exception raised by one attempt."""
    import openai

    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return f"http_{code}", code in RETRYABLE_STATUS or code >= 500
    if isinstance(exc, JudgeParseError):
        return "unparsable", True
    if isinstance(exc, (MalformedResponseError, openai.APIResponseValidationError, ValueError)):
        # a body that is not JSON (ValueError from its decoder), or JSON that is not a chat completion
        return "bad_response", True
    return f"error_{type(exc).__name__}", False


def _content(response: Any) -> str:
    """The first choice's message text; MalformedResponseError when the body is not a chat completion.

    For a non-JSON body the openai client returns the raw text instead of raising.
    """
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedResponseError("response has no choices")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        raise MalformedResponseError("response message has no text content")
    return content


class JudgeClient:
    """Runs batches of chat requests against one judge endpoint; see the module docstring."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.stats = JudgeStats()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import openai

                api_key = os.environ.get(self.config.api_key_env)
                if not api_key:
                    # vLLM/SGLang servers accept any key; a real provider answers 401 (not retried)
                    logger.info("judge: $%s is not set; sending a placeholder API key", self.config.api_key_env)
                    api_key = "EMPTY"
                self._client = openai.AsyncOpenAI(
                    base_url=self.config.base_url,
                    api_key=api_key,
                    timeout=self.config.timeout_s,
                    max_retries=0,
                )
                self._sem = asyncio.Semaphore(self.config.concurrency)
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="judge-event-loop", daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.backoff_max_s, self.config.backoff_s * (2**attempt))
        # jitter de-synchronises the retries of a batch that failed together
        return delay * (0.5 + 0.5 * random.random())

    async def _attempt(self, request: ChatRequest) -> Any:
        extra: dict[str, Any] = {}
        if self.config.temperature is not None:
            extra["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            extra["max_tokens"] = self.config.max_tokens
        assert self._sem is not None
        async with self._sem:
            response = await asyncio.wait_for(
                self._client.chat.completions.create(
                    model=self.config.model,
                    messages=[
                        {"role": "system", "content": request.system},
                        {"role": "user", "content": request.user},
                    ],
                    **extra,
                ),
                timeout=self.config.timeout_s,
            )
        return request.parse(_content(response))

    async def _call(self, request: ChatRequest, batch_reasons: Counter) -> Any:
        self.stats.requests += 1
        for attempt in range(self.config.max_retries + 1):
            self.stats.attempts += 1
            try:
                return await self._attempt(request)
            except Exception as exc:  # every failure is classified; none may stop the batch
                reason, retryable = classify(exc)
                self.stats.reasons[reason] += 1
                batch_reasons[reason] += 1
                logger.debug("judge attempt %d failed: %s (%s)", attempt + 1, reason, type(exc).__name__)
                if not retryable or attempt == self.config.max_retries:
                    break
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt))
        self.stats.failures += 1
        return None

    async def _batch(self, requests: Sequence[ChatRequest]) -> list[Any]:
        reasons: Counter = Counter()
        results = await asyncio.gather(*(self._call(r, reasons) for r in requests))
        failed = sum(r is None for r in results)
        if failed:
            logger.warning(
                "judge %s at %s: %d of %d calls failed after up to %d attempts (failed attempts by reason: %s)",
                self.config.model,
                self.config.base_url,
                failed,
                len(requests),
                self.config.max_retries + 1,
                dict(reasons),
            )
        return list(results)

    def _submit(self, requests: Sequence[ChatRequest]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(self._batch(list(requests)), self._start())

    def run(self, requests: Sequence[ChatRequest]) -> list[Any]:
        """Parsed answers in request order; None where a call finally failed. Blocks the caller."""
        if not requests:
            return []
        return self._submit(requests).result()

    async def arun(self, requests: Sequence[ChatRequest]) -> list[Any]:
        """``run`` for callers inside an event loop: awaits without blocking their loop."""
        if not requests:
            return []
        return await asyncio.wrap_future(self._submit(requests))

    def close(self) -> None:
        """Close the HTTP client and stop the helper thread (the client can start again later)."""
        with self._lock:
            loop, self._loop = self._loop, None
            if loop is None:
                return
            client, self._client = self._client, None
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=5)
            loop.close()


_CLIENTS: dict[JudgeConfig, JudgeClient] = {}
_CLIENTS_LOCK = threading.Lock()


def judge_client(config: JudgeConfig) -> JudgeClient:
    """The process-wide client for ``config`` (reused across batches: one connection pool)."""
    with _CLIENTS_LOCK:
        if config not in _CLIENTS:
            _CLIENTS[config] = JudgeClient(config)
        return _CLIENTS[config]


@atexit.register
def close_all() -> None:
    """Close every cached client (also called at interpreter exit)."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()
