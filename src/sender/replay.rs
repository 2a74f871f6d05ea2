//! DPoP replay detection (RFC 9449 §11.1): a proof is accepted once per sidecar within its
//! window. The memory is Envoy's shared data, seen by every worker; it has no delete, so it is
//! a fixed set of slots, each holding a few entries that fall out when they expire. The slot
//! logic is here; the filter reads and writes a slot with one compare-and-swap.

use crate::keystore::SharedStore;

/// The sidecar's answer for one proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Fresh,
    Replayed,
    /// Every entry of the proof's slot is still in its window: refusing is the only way to
    /// keep the single-use promise (only proofs that verified can fill a slot).
    Full,
    /// The shared memory could not be read or written (or kept changing under us).
    Unavailable,
}

/// Proofs remembered per slot.
pub const SLOT_ENTRIES: usize = 16;
/// A proof's 16-byte id, then its expiry in seconds, little-endian.
const ENTRY_BYTES: usize = 24;

/// Which slot a proof's id falls in.
pub fn slot_index(id: &[u8; 16], slots: usize) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(id.get(..8).unwrap_or(&[0u8; 8]));
    let spread = u64::from_le_bytes(first);
    usize::try_from(spread % (slots.max(1) as u64)).unwrap_or(0)
}

/// The slot with this proof added, or why not. Expired entries are dropped; an unreadable
/// slot (a foreign or truncated value) is treated as empty rather than trusted.
pub fn admit(
    slot: Option<&[u8]>,
    id: [u8; 16],
    expires_s: u64,
    now_s: u64,
) -> Result<Vec<u8>, Admission> {
    let mut kept: Vec<u8> = Vec::with_capacity(SLOT_ENTRIES * ENTRY_BYTES);
    for entry in slot.unwrap_or_default().chunks_exact(ENTRY_BYTES) {
        let (entry_id, expiry) = entry.split_at(16);
        let mut expiry_bytes = [0u8; 8];
        expiry_bytes.copy_from_slice(expiry);
        if u64::from_le_bytes(expiry_bytes) < now_s {
            continue;
        }
        if entry_id == id {
            return Err(Admission::Replayed);
        }
        kept.extend_from_slice(entry);
    }
    if kept.len() >= SLOT_ENTRIES * ENTRY_BYTES {
        return Err(Admission::Full);
    }
    kept.extend_from_slice(&id);
    kept.extend_from_slice(&expires_s.to_le_bytes());
    Ok(kept)
}

/// Compare-and-swap attempts before giving up on a slot other workers keep changing.
const CAS_ATTEMPTS: usize = 8;
/// Shared-data keys of the replay slots; shared by every plugin of the VM, as a proof replayed
/// to another plugin of the sidecar is a replay too.
const SLOT_KEY_PREFIX: &str = "mesh-oauth.dpop-replay.";

/// Creates the slots that do not exist yet, empty. Envoy's shared data cannot create a value
/// conditionally (a write without a CAS token always wins), so slots are made before any proof
/// is recorded: from then on every write to a slot is a compare-and-swap.
pub fn prepare_slots(shared: &dyn SharedStore, max_proofs: usize) {
    let slots = (max_proofs / SLOT_ENTRIES).max(1);
    for slot in 0..slots {
        let key = format!("{SLOT_KEY_PREFIX}{slot}");
        if shared.get(&key).0.is_none() {
            shared.set(&key, &[], None);
        }
    }
}

/// Records a proof in the sidecar's shared memory: one read and one compare-and-swap write
/// when no other worker writes the same slot at the same moment.
pub fn admit_shared(
    shared: &dyn SharedStore,
    max_proofs: usize,
    id: [u8; 16],
    expires_s: u64,
    now_s: u64,
) -> Admission {
    let slots = (max_proofs / SLOT_ENTRIES).max(1);
    let key = format!("{SLOT_KEY_PREFIX}{}", slot_index(&id, slots));
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = shared.get(&key);
        match admit(value.as_deref(), id, expires_s, now_s) {
            Err(refused) => return refused,
            Ok(slot) if shared.set(&key, &slot, cas) => return Admission::Fresh,
            Ok(_) => {}
        }
    }
    Admission::Unavailable
}

/// Replay memory in one process: `explain` and tests.
#[derive(Default)]
pub struct LocalReplay {
    seen: std::cell::RefCell<Vec<([u8; 16], u64)>>,
}

impl LocalReplay {
    pub fn admit(&self, id: [u8; 16], expires_s: u64, now_s: u64) -> Admission {
        let mut seen = self.seen.borrow_mut();
        seen.retain(|(_, expiry)| *expiry >= now_s);
        if seen.iter().any(|(known, _)| *known == id) {
            return Admission::Replayed;
        }
        seen.push((id, expires_s));
        Admission::Fresh
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn a_proof_is_admitted_once_until_it_expires() {
        let slot = admit(None, id(1), 160, 100).unwrap();
        assert_eq!(
            admit(Some(&slot), id(1), 160, 150),
            Err(Admission::Replayed)
        );
        let slot = admit(Some(&slot), id(2), 170, 150).unwrap();
        assert_eq!(slot.len(), 2 * ENTRY_BYTES);
        // Past its expiry the entry is dropped (the proof would be refused as stale anyway).
        let slot = admit(Some(&slot), id(3), 230, 161).unwrap();
        assert_eq!(slot.len(), 2 * ENTRY_BYTES);
        assert!(admit(Some(&slot), id(1), 230, 161).is_ok());
    }

    #[test]
    fn a_full_slot_refuses_rather_than_forgets() {
        let mut slot = Vec::new();
        for n in 0..SLOT_ENTRIES as u8 {
            slot = admit(Some(&slot), id(n), 200, 100).unwrap();
        }
        assert_eq!(admit(Some(&slot), id(99), 200, 100), Err(Admission::Full));
        // Entries still there are still refused as replays, not lost.
        assert_eq!(
            admit(Some(&slot), id(3), 200, 100),
            Err(Admission::Replayed)
        );
        assert!(admit(Some(&slot), id(99), 260, 201).is_ok());
    }

    #[test]
    fn a_garbled_slot_is_read_as_empty_not_as_admission() {
        let garbled = vec![7u8; ENTRY_BYTES - 1];
        assert_eq!(
            admit(Some(&garbled), id(1), 200, 100).unwrap().len(),
            ENTRY_BYTES
        );
    }

    #[test]
    fn workers_share_one_memory_through_compare_and_swap() {
        let shared = crate::keystore::tests::Shared::default();
        prepare_slots(&shared, 64);
        prepare_slots(&shared, 1);
        assert_eq!(shared.0.borrow().len(), 4);
        assert_eq!(admit_shared(&shared, 64, id(1), 200, 100), Admission::Fresh);
        // Another worker, same sidecar memory: the proof is known.
        assert_eq!(
            admit_shared(&shared, 64, id(1), 200, 100),
            Admission::Replayed
        );
        assert_eq!(admit_shared(&shared, 64, id(2), 200, 100), Admission::Fresh);
        // A worker whose read is overtaken by another's write retries with the new value.
        struct Racing<'s>(&'s crate::keystore::tests::Shared, std::cell::Cell<bool>);
        impl SharedStore for Racing<'_> {
            fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
                let read = self.0.get(key);
                if !self.1.replace(true) {
                    // Someone else records proof 3 between our read and our write.
                    let (value, cas) = self.0.get(key);
                    let slot = admit(value.as_deref(), id(3), 200, 100).unwrap();
                    assert!(self.0.set(key, &slot, cas));
                }
                read
            }
            fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
                self.0.set(key, value, cas)
            }
        }
        let racing = Racing(&shared, std::cell::Cell::new(false));
        assert_eq!(admit_shared(&racing, 1, id(4), 200, 100), Admission::Fresh);
        // Preparing again keeps what the slots hold.
        prepare_slots(&shared, 64);
        assert_eq!(
            admit_shared(&shared, 1, id(3), 200, 100),
            Admission::Replayed
        );
        assert_eq!(
            admit_shared(&shared, 1, id(4), 200, 100),
            Admission::Replayed
        );
    }

    #[test]
    fn ids_spread_over_the_slots() {
        let mut counts = [0usize; 8];
        for n in 0..=255u8 {
            let mut id = [0u8; 16];
            id[0] = n;
            id[1] = n.wrapping_mul(31);
            counts[slot_index(&id, 8)] += 1;
        }
        assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
    }
}
