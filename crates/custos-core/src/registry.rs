//! The in-memory key registry: every key with its versions, loaded from the store at start and written
//! through on every change, so the sign path never waits on the store to find a key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use custos_store::Store;
use custos_types::{KeyHandle, KeyName, KeyRecord, ProviderName};

use crate::CoreError;

/// Keys by name.
#[derive(Debug)]
pub(crate) struct Registry {
    store: Arc<dyn Store>,
    keys: RwLock<HashMap<KeyName, Arc<KeyRecord>>>,
}

fn poisoned() -> CoreError {
    CoreError::Internal("key registry lock poisoned".into())
}

impl Registry {
    /// Loads every key from the store.
    pub(crate) async fn load(store: Arc<dyn Store>) -> Result<Registry, CoreError> {
        let keys = store
            .list_keys()
            .await?
            .into_iter()
            .map(|k| (k.name.clone(), Arc::new(k)))
            .collect();
        Ok(Registry {
            store,
            keys: RwLock::new(keys),
        })
    }

    /// One key.
    pub(crate) fn get(&self, name: &KeyName) -> Result<Arc<KeyRecord>, CoreError> {
        self.keys
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::KeyNotFound(name.clone()))
    }

    /// Every key, ordered by name.
    pub(crate) fn list(&self) -> Result<Vec<Arc<KeyRecord>>, CoreError> {
        let mut keys: Vec<_> = self
            .keys
            .read()
            .map_err(|_| poisoned())?
            .values()
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(keys)
    }

    /// Refuses a name that is taken.
    pub(crate) fn check_free(&self, name: &KeyName) -> Result<(), CoreError> {
        if self.keys.read().map_err(|_| poisoned())?.contains_key(name) {
            return Err(CoreError::KeyExists(name.clone()));
        }
        Ok(())
    }

    /// Whether some key version already lives at `handle` in `provider`.
    pub(crate) fn holds(
        &self,
        provider: &ProviderName,
        handle: &KeyHandle,
    ) -> Result<bool, CoreError> {
        Ok(self.keys.read().map_err(|_| poisoned())?.values().any(|k| {
            k.versions
                .iter()
                .flat_map(|v| &v.locations)
                .any(|l| l.provider == *provider && l.handle == *handle)
        }))
    }

    /// Adds (or replaces) a key that is already in the store.
    pub(crate) fn insert(&self, key: Arc<KeyRecord>) -> Result<(), CoreError> {
        self.keys
            .write()
            .map_err(|_| poisoned())?
            .insert(key.name.clone(), key);
        Ok(())
    }

    /// Reads a key back from the store after a change and replaces it in memory.
    pub(crate) async fn reload(&self, name: &KeyName) -> Result<Arc<KeyRecord>, CoreError> {
        let key = Arc::new(
            self.store
                .get_key(name)
                .await?
                .ok_or_else(|| CoreError::KeyNotFound(name.clone()))?,
        );
        self.insert(Arc::clone(&key))?;
        Ok(key)
    }
}
