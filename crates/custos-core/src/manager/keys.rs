//! Keys: reading, creating (generated, adopted, imported), their state (enable, disable, scheduled
//! deletion), descriptions and tags.

use std::collections::BTreeMap;
use std::sync::Arc;

use custos_types::{Algorithm, ErrorCode, KeyName, KeyRecord, KeyState, PrivateKey, ProviderName};

use super::KeyManager;
use crate::lifecycle::Origin;
use crate::{audited, CoreError, Operation, RequestContext};

/// A change of a key's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStateChange {
    /// Back to signing and verifying.
    Enable,
    /// Neither signs nor verifies until enabled.
    Disable,
    /// Destroyed after this many days (7 ..= 30) unless cancelled; neither signs nor verifies meanwhile.
    ScheduleDeletion {
        /// Days until destruction.
        days: u32,
    },
    /// The deletion is called off; the key stays disabled until enabled (as in AWS KMS).
    CancelDeletion,
}

/// The window a scheduled deletion may have, in days.
pub const DELETION_WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;

impl KeyStateChange {
    /// The operation that may make this change: deletion is admin's, the rest is key management.
    fn operation(self, id: &str) -> Operation<'_> {
        match self {
            KeyStateChange::ScheduleDeletion { .. } | KeyStateChange::CancelDeletion => {
                Operation::DeleteKey(id)
            }
            KeyStateChange::Enable | KeyStateChange::Disable => Operation::ManageKey(id),
        }
    }

    fn audit_name(self) -> &'static str {
        match self {
            KeyStateChange::Enable => "key_enable",
            KeyStateChange::Disable => "key_disable",
            KeyStateChange::ScheduleDeletion { .. } => "key_schedule_deletion",
            KeyStateChange::CancelDeletion => "key_cancel_deletion",
        }
    }

    /// The state after the change, or why it does not apply to `current`.
    pub(crate) fn apply(
        self,
        id: &str,
        current: KeyState,
        now: custos_types::Timestamp,
    ) -> Result<KeyState, CoreError> {
        let invalid = |why: String| CoreError::bad(ErrorCode::InvalidKeyState, why);
        match (self, current) {
            (_, KeyState::Destroyed) => Err(invalid(format!("key {id} is destroyed"))),
            (
                KeyStateChange::Enable | KeyStateChange::Disable,
                KeyState::PendingDeletion { .. },
            ) => Err(invalid(format!(
                "key {id} is pending deletion: cancel the deletion first"
            ))),
            (KeyStateChange::Enable, _) => Ok(KeyState::Enabled),
            (KeyStateChange::Disable, _) => Ok(KeyState::Disabled),
            (KeyStateChange::ScheduleDeletion { .. }, KeyState::PendingDeletion { .. }) => {
                Err(invalid(format!("key {id} is already pending deletion")))
            }
            (KeyStateChange::ScheduleDeletion { days }, _) => {
                if !DELETION_WINDOW_DAYS.contains(&days) {
                    return Err(CoreError::bad(
                        ErrorCode::InvalidRequest,
                        format!("the deletion window is 7 to 30 days, not {days}"),
                    ));
                }
                let at = now
                    .checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days)))
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                Ok(KeyState::PendingDeletion { at })
            }
            (KeyStateChange::CancelDeletion, KeyState::PendingDeletion { .. }) => {
                Ok(KeyState::Disabled)
            }
            (KeyStateChange::CancelDeletion, _) => {
                Err(invalid(format!("key {id} is not pending deletion")))
            }
        }
    }
}

/// Puts the key's current version and provider into an audit entry.
fn describe_key(key: &Arc<KeyRecord>, entry: &mut custos_audit::AuditEntry) {
    if let Some(current) = key.current() {
        entry.version = Some(current.version.0);
        entry.provider = current.locations.first().map(|l| l.provider.to_string());
    }
}

impl KeyManager {
    /// One key; needs `keys:read`.
    pub async fn key(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("key_read")
        })
        .await?;
        self.registry().get(name)
    }

    /// A key's record for a caller allowed `op` on it: for a surface that must know the key's algorithm
    /// to build its request (the KMS API's `Sign` checks the signing algorithm first). A refusal is
    /// recorded as `operation`.
    pub async fn key_for(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        operation: &str,
        name: &KeyName,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, op, || {
            let mut entry = ctx.entry(operation);
            entry.key = Some(name.to_string());
            entry
        })
        .await?;
        self.registry().get(name)
    }

    /// Every key, ordered by name; needs `keys:read`.
    pub async fn list_keys(&self, ctx: &RequestContext) -> Result<Vec<Arc<KeyRecord>>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("key_list")
        })
        .await?;
        self.registry().list()
    }

    /// Whether a key of that name exists (for surfaces resolving their own ids; no secret is revealed:
    /// a caller learns only what `keys:read` or signing with the key would tell it).
    pub fn key_exists(&self, name: &KeyName) -> bool {
        self.registry().get(name).is_ok()
    }

    /// Creates a key with its first version. An empty `chain` means the default provider.
    pub async fn create_key(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        self.create_key_described(ctx, name, algorithm, chain, String::new())
            .await
    }

    /// [`KeyManager::create_key`] with a description.
    pub async fn create_key_described(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
        description: String,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_create");
        entry.key = Some(name.to_string());
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            self.lifecycle.create(
                name,
                algorithm,
                chain,
                Origin::Generate,
                check_description(description)?,
            ),
            describe_key,
        )
        .await
    }

    /// Takes a key that already exists in a provider into Custos as version 1 of `name`, by the provider's
    /// reference (for PKCS#11: `label:<text>` or `id:<hex>`).
    pub async fn adopt_key(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        algorithm: Algorithm,
        provider: Option<ProviderName>,
        reference: &str,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_adopt");
        entry.key = Some(name.to_string());
        entry.subject = Some(reference.chars().take(200).collect());
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            self.lifecycle.create(
                name,
                algorithm,
                provider.into_iter().collect(),
                Origin::Adopt(reference),
                String::new(),
            ),
            describe_key,
        )
        .await
    }

    /// Takes key material made elsewhere into Custos as version 1 of `name`, imported into `provider`
    /// (default: the default provider), which must be able to import.
    pub async fn import_key(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        key: &PrivateKey,
        provider: Option<ProviderName>,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_import");
        entry.key = Some(name.to_string());
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            self.lifecycle.create(
                name,
                key.algorithm(),
                provider.into_iter().collect(),
                Origin::Import(key),
                String::new(),
            ),
            describe_key,
        )
        .await
    }

    /// Changes a key's own state. Enabling and disabling need `keys:rotate`; scheduling or cancelling a
    /// deletion needs `admin`.
    pub async fn set_key_state(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        change: KeyStateChange,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry(change.audit_name());
        entry.key = Some(name.to_string());
        let work = async {
            let key = self.registry().get(name)?;
            let state = change.apply(name.as_str(), key.state, self.clock.now())?;
            self.lifecycle.set_state(name, state).await
        };
        audited::run(
            &self.audit,
            ctx,
            change.operation(name.as_str()),
            entry,
            work,
            |key, e| e.subject = Some(key.state.to_string()),
        )
        .await
    }

    /// Sets a key's description (at most 8192 characters, as in AWS KMS); needs `keys:rotate`.
    pub async fn set_description(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        description: String,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_describe");
        entry.key = Some(name.to_string());
        let work = async {
            self.registry().get(name)?;
            let description = check_description(description)?;
            self.lifecycle.set_description(name, &description).await
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageKey(name.as_str()),
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    /// The tags of a key or sealing key id; needs `keys:read`.
    pub async fn tags(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<BTreeMap<String, String>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("tag_list")
        })
        .await?;
        Ok(self.store.tags(id).await?)
    }

    /// Sets and removes tags of a key or sealing key id; needs `keys:rotate`. Tag names are 1-128 and
    /// values 0-256 characters, at most 50 tags per key, as in AWS KMS.
    pub async fn update_tags(
        &self,
        ctx: &RequestContext,
        id: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<(), CoreError> {
        let mut entry = ctx.entry("key_tag");
        entry.key = Some(id.chars().take(128).collect());
        entry.subject = Some(format!("{} set, {} removed", set.len(), remove.len()));
        let work = async {
            let bad = |m: String| CoreError::bad(ErrorCode::InvalidRequest, m);
            for (tag, value) in &set {
                if tag.is_empty() || tag.chars().count() > 128 || value.chars().count() > 256 {
                    return Err(bad(format!(
                        "tag {:?}: a tag name is 1-128 characters and its value at most 256",
                        tag.chars().take(40).collect::<String>()
                    )));
                }
            }
            let mut after = self.store.tags(id).await?;
            after.extend(set.clone());
            for tag in &remove {
                after.remove(tag);
            }
            if after.len() > 50 {
                return Err(bad("a key has at most 50 tags".into()));
            }
            Ok(self.store.update_tags(id, &set, &remove).await?)
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageKey(id),
            entry,
            work,
            |_, _| {},
        )
        .await
    }
}

fn check_description(description: String) -> Result<String, CoreError> {
    if description.chars().count() > 8192
        || description.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(CoreError::bad(
            ErrorCode::InvalidRequest,
            "a description is at most 8192 printable characters",
        ));
    }
    Ok(description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_follow_the_kms_rules() {
        let now: custos_types::Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let pending = KeyStateChange::ScheduleDeletion { days: 7 }
            .apply("k", KeyState::Enabled, now)
            .unwrap();
        assert_eq!(
            pending,
            KeyState::PendingDeletion {
                at: "2026-12-08T00:00:00Z".parse().unwrap()
            }
        );
        let code = |change: KeyStateChange, from| change.apply("k", from, now).unwrap_err().code();
        assert_eq!(
            code(KeyStateChange::Enable, pending),
            ErrorCode::InvalidKeyState
        );
        assert_eq!(
            code(KeyStateChange::ScheduleDeletion { days: 7 }, pending),
            ErrorCode::InvalidKeyState
        );
        assert_eq!(
            code(
                KeyStateChange::ScheduleDeletion { days: 6 },
                KeyState::Enabled
            ),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(KeyStateChange::CancelDeletion, KeyState::Enabled),
            ErrorCode::InvalidKeyState
        );
        assert_eq!(
            code(KeyStateChange::Enable, KeyState::Destroyed),
            ErrorCode::InvalidKeyState
        );
        assert_eq!(
            KeyStateChange::CancelDeletion
                .apply("k", pending, now)
                .unwrap(),
            KeyState::Disabled
        );
        assert_eq!(
            KeyStateChange::Disable
                .apply("k", KeyState::Enabled, now)
                .unwrap(),
            KeyState::Disabled
        );
    }
}
