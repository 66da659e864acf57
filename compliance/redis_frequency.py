"""The shared frequency counter: one atomic Lua script per capped outbound call (Redis).

Several exchange processes count the same consumer's attempts in one sorted set per
``<vertical>:<e164>`` (scores are UNIX microseconds, exact in a double). The script drops
attempts older than two windows, counts those at or after ``t - window`` and, below the cap,
records this attempt, all in one step, so two concurrent dials can never both see "2 prior"
(COMPLIANCE.md §2). Every bound is passed as a string computed here: Lua would print large
numbers in exponent form and lose digits.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

LUA = """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
local n = redis.call('ZCOUNT', key, ARGV[2], '+inf')
local cap = tonumber(ARGV[3])
if n >= cap then
  local r = redis.call('ZRANGEBYSCORE', key, ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', n - cap, 1)
  return {0, n, r[2]}
end
redis.call('ZADD', key, ARGV[4], ARGV[5])
redis.call('PEXPIRE', key, ARGV[6])
return {1, n + 1, ''}
"""


class RedisFrequency:
    """``check_and_record`` against Redis; keys live under ``<prefix>freq:``."""

    def __init__(self, url: str, prefix: str = "dce:", timeout_s: float = 0.25, client: aioredis.Redis | None = None) -> None:
        self.client = client if client is not None else aioredis.from_url(url)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._script = self.client.register_script(LUA)

    async def check_and_record(self, key: str, at_ns: int, cap: int, window_ns: int, member: str) -> int | None:
        """None: recorded (allowed). Else the instant (ns) from which the next one may go."""
        at_us, win_us = at_ns // 1000, window_ns // 1000
        args = [str(at_us - 2 * win_us), str(at_us - win_us), str(cap), str(at_us), member, str(2 * win_us // 1000)]
        res = await asyncio.wait_for(self._script(keys=[f"{self.prefix}freq:{key}"], args=args), self.timeout_s)
        if int(res[0]) == 1:
            return None
        oldest_us = int(float(res[2]))
        return oldest_us * 1000 + window_ns + 1

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
