//! Back-channel logouts in the sidecar's shared data, so every worker refuses a logged-out
//! session at once. Keys are digests of the issuer and the `sid`/`sub`, never the identifiers
//! themselves; values are the logout time.

use super::flow::LogoutLedger;
pub use super::refreshes::{SharedRefreshes, REFRESH_SLOTS};
use crate::keystore::SharedStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;

/// The logouts of one issuer in shared data.
pub struct SharedLedger<'a> {
    pub store: &'a dyn SharedStore,
    pub issuer: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sid,
    Sub,
}

impl SharedLedger<'_> {
    fn key(&self, kind: Kind, value: &str) -> String {
        let label = match kind {
            Kind::Sid => "sid",
            Kind::Sub => "sub",
        };
        let mut input = Vec::with_capacity(self.issuer.len() + value.len() + 8);
        for part in [self.issuer, label, value] {
            input.extend_from_slice(&(part.len() as u32).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        let hash = digest::digest(&digest::SHA256, &input);
        format!(
            "mesh-oauth/logout/{}",
            URL_SAFE_NO_PAD.encode(&hash.as_ref()[..18])
        )
    }

    fn read(&self, kind: Kind, value: &str) -> Option<u64> {
        let (bytes, _) = self.store.get(&self.key(kind, value));
        let stamp: [u8; 8] = bytes?.get(..8)?.try_into().ok()?;
        Some(u64::from_be_bytes(stamp))
    }

    fn write(&self, kind: Kind, value: &str, now: u64) {
        self.store
            .set(&self.key(kind, value), &now.to_be_bytes(), None);
    }

    /// Records a verified back-channel logout (Back-Channel Logout 1.0 §2.7): with a `sid`,
    /// that OP session ends; with only a `sub`, every session of the subject from before now.
    pub fn record(&self, sid: Option<&str>, sub: Option<&str>, now: u64) {
        match (sid, sub) {
            (Some(sid), _) => self.write(Kind::Sid, sid, now),
            (None, Some(sub)) => self.write(Kind::Sub, sub, now),
            (None, None) => {}
        }
    }
}

impl LogoutLedger for SharedLedger<'_> {
    fn sid_logged_out_at(&self, sid: &str) -> Option<u64> {
        self.read(Kind::Sid, sid)
    }

    fn sub_logged_out_at(&self, sub: &str) -> Option<u64> {
        self.read(Kind::Sub, sub)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keystore::MemoryShared as Map;

    #[test]
    fn a_sid_logout_is_seen_by_every_reader_and_names_nothing() {
        let map = Map::default();
        let ledger = SharedLedger {
            store: &map,
            issuer: "https://op.example.com",
        };
        ledger.record(Some("session-1"), Some("alice"), 100);
        let reader = SharedLedger {
            store: &map,
            issuer: "https://op.example.com",
        };
        assert_eq!(reader.sid_logged_out_at("session-1"), Some(100));
        assert_eq!(reader.sid_logged_out_at("session-2"), None);
        // With a sid, only that session ends.
        assert_eq!(reader.sub_logged_out_at("alice"), None);
        // Another issuer's session of the same id is not affected.
        let other = SharedLedger {
            store: &map,
            issuer: "https://other.example.com",
        };
        assert_eq!(other.sid_logged_out_at("session-1"), None);
        for key in map.0.borrow().keys() {
            assert!(
                !key.contains("session-1") && !key.contains("alice"),
                "{key}"
            );
        }
    }

    #[test]
    fn a_sub_logout_keeps_its_latest_time() {
        let map = Map::default();
        let ledger = SharedLedger {
            store: &map,
            issuer: "https://op.example.com",
        };
        ledger.record(None, Some("alice"), 100);
        ledger.record(None, Some("alice"), 200);
        assert_eq!(ledger.sub_logged_out_at("alice"), Some(200));
        ledger.record(None, None, 300);
        assert_eq!(map.0.borrow().len(), 1);
    }
}
