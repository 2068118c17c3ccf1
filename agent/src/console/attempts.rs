//! Sign-in attempt limits (SPEC §9): failed sign-ins are counted per
//! client address and per account name in fixed windows; past the limit,
//! every attempt for that key is refused without checking the password
//! until the window ends, so guessing costs an attacker the window and
//! argon2's CPU cost is never spent for them. A success clears the
//! account's count (not the address's). Time is an argument, so the rules
//! are tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The limits: failures per window, per address and per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    pub window: Duration,
    pub per_account: u32,
    pub per_address: u32,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits {
            window: Duration::from_secs(15 * 60),
            per_account: 5,
            per_address: 20,
        }
    }
}

/// The failure counts.
#[derive(Debug, Default)]
pub struct Attempts {
    limits: AttemptLimits,
    counts: Mutex<HashMap<Key, (DateTime<Utc>, u32)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

impl Attempts {
    /// Counts with `limits`.
    pub fn new(limits: AttemptLimits) -> Attempts {
        Attempts {
            limits,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when `account` or `address` has used up its failures at
    /// `now`: no attempt may be made for `wait`.
    pub fn check(
        &self,
        account: &str,
        address: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<(), Duration> {
        let map = self.lock();
        let blocked = |key: &Key, limit: u32| -> Option<Duration> {
            let (start, count) = map.get(key)?;
            let end = *start + self.window();
            (*count >= limit && end > now).then(|| (end - now).to_std().unwrap_or_default())
        };
        let waits = [
            blocked(&Key::Account(account.to_string()), self.limits.per_account),
            blocked(&Key::Address(address), self.limits.per_address),
        ];
        match waits.into_iter().flatten().max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Records a failed sign-in for both keys.
    pub fn failed(&self, account: &str, address: IpAddr, now: DateTime<Utc>) {
        let window = self.window();
        let mut map = self.lock();
        // Old windows go whenever one is written: the map holds at most
        // one window's worth of failing keys.
        map.retain(|_, (start, _)| *start + window > now);
        for key in [Key::Account(account.to_string()), Key::Address(address)] {
            let entry = map.entry(key).or_insert((now, 0));
            entry.1 += 1;
        }
    }

    /// Clears the account's failures after a successful sign-in.
    pub fn succeeded(&self, account: &str) {
        self.lock().remove(&Key::Account(account.to_string()));
    }

    fn window(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.limits.window).unwrap_or(chrono::Duration::minutes(15))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (DateTime<Utc>, u32)>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn limits() -> AttemptLimits {
        AttemptLimits {
            window: Duration::from_secs(60),
            per_account: 3,
            per_address: 5,
        }
    }

    #[test]
    fn an_account_is_refused_after_its_failures_until_the_window_ends() {
        let attempts = Attempts::new(limits());
        for i in 0..3 {
            assert!(attempts.check("alice", ip(1), t(i)).is_ok());
            attempts.failed("alice", ip(i as u8 + 1), t(i));
        }
        let wait = attempts.check("alice", ip(9), t(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50), "from another address too");
        assert!(attempts.check("bob", ip(9), t(10)).is_ok());
        assert!(attempts.check("alice", ip(9), t(60)).is_ok(), "window over");
    }

    #[test]
    fn an_address_is_refused_after_its_failures_whatever_the_account() {
        let attempts = Attempts::new(limits());
        for i in 0..5 {
            attempts.failed(&format!("user{i}"), ip(1), t(0));
        }
        assert!(attempts.check("someone-else", ip(1), t(1)).is_err());
        assert!(attempts.check("someone-else", ip(2), t(1)).is_ok());
    }

    #[test]
    fn a_success_clears_the_account_but_not_the_address() {
        let attempts = Attempts::new(AttemptLimits {
            per_address: 3,
            ..limits()
        });
        for _ in 0..2 {
            attempts.failed("alice", ip(1), t(0));
        }
        attempts.succeeded("alice");
        attempts.failed("alice", ip(1), t(1));
        attempts.failed("alice", ip(2), t(1));
        assert!(
            attempts.check("alice", ip(3), t(2)).is_ok(),
            "2 since success"
        );
        assert!(attempts.check("bob", ip(1), t(2)).is_err(), "address at 3");
    }
}
