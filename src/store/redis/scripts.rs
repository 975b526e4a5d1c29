//! The Lua scripts that make multi-step updates atomic. Every script touches only keys of
//! one hash tag, so it runs unchanged on Redis Cluster.

use redis::Script;

/// Compiled scripts (their SHA1 is computed once).
pub(super) struct Scripts {
    /// KEYS: cert body, current pointer, current entry. ARGV: body, serial, notAfter (Unix
    /// seconds). Writes all three, expiring at notAfter.
    pub(super) put: Script,
    /// KEYS: current pointer, cert body, current entry. ARGV: serial. Deletes the body, and
    /// the pointer and the entry only if the pointer names this serial.
    pub(super) evict: Script,
    /// KEYS: lock. ARGV: token, ttl ms. Extends the lock if the token holds it; 1 or 0.
    pub(super) renew: Script,
    /// KEYS: lock. ARGV: token. Deletes the lock if the token holds it; 1 or 0.
    pub(super) release: Script,
    /// KEYS: item, group index. ARGV: sealed blob, ttl ms. Writes the item, adds it to the
    /// index and keeps the index alive at least as long as the item.
    pub(super) put_secret: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            put: Script::new(
                r"redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
                  redis.call('SET', KEYS[2], ARGV[2], 'EXAT', ARGV[3])
                  redis.call('SET', KEYS[3], ARGV[1], 'EXAT', ARGV[3])
                  return 1",
            ),
            evict: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    redis.call('DEL', KEYS[1], KEYS[3])
                  end
                  redis.call('DEL', KEYS[2])
                  return 1",
            ),
            renew: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  end
                  return 0",
            ),
            release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                  end
                  return 0",
            ),
            put_secret: Script::new(
                r"redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                  redis.call('SADD', KEYS[2], KEYS[1])
                  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
                    redis.call('PEXPIRE', KEYS[2], ARGV[2])
                  end
                  return 1",
            ),
        }
    }
}
