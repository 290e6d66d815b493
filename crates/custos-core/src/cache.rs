//! The signature cache: a repeated sign request for the same key version and payload gets the signature
//! made the first time, so a caller's retries never produce a second, different signature.
//!
//! Entries are single-flight: concurrent identical requests wait for one provider call. The cache is a
//! bounded LRU (`maxCacheSize` entries); emergency signatures are never cached.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use custos_types::{KeyName, KeyVersion};
use lru::LruCache;
use tokio::sync::OnceCell;

use crate::SignOutcome;

/// What identifies a signature: the key, the version, and SHA-256 of the exact bytes signed.
pub(crate) type CacheKey = (KeyName, KeyVersion, [u8; 32]);

/// One cached (or being made) signature.
pub(crate) type Slot = Arc<OnceCell<SignOutcome>>;

/// A bounded LRU of signatures.
#[derive(Debug)]
pub(crate) struct SignatureCache {
    entries: Mutex<LruCache<CacheKey, Slot>>,
}

impl SignatureCache {
    /// A cache of at most `size` signatures; `None` when `size` is 0 (caching off).
    pub(crate) fn new(size: usize) -> Option<SignatureCache> {
        NonZeroUsize::new(size).map(|size| SignatureCache {
            entries: Mutex::new(LruCache::new(size)),
        })
    }

    /// The slot for `key`, made if absent (and marked most recently used).
    pub(crate) fn slot(&self, key: CacheKey) -> Slot {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(entries.get_or_insert(key, Slot::default))
    }

    /// Drops a slot that ended without a cacheable signature.
    pub(crate) fn forget(&self, key: &CacheKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.peek(key).is_some_and(|slot| !slot.initialized()) {
            entries.pop(key);
        }
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
