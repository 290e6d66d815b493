//! The rotation state machine, whose progress is the job record `rotation_job:<key>` in the store: record
//! the target version → back up the current version (or record why there is none) → make the new version
//! in every provider of the chain → commit it (one transaction: new current, old enabled) → delete the
//! job. The target number must be one above the highest, so resuming never makes two current versions
//! nor skips one.

use std::sync::Arc;

use custos_store::Store;
use custos_types::{ErrorCode, KeyKind, KeyName, KeyRecord, KeyVersion, Timestamp, VersionState};
use serde::{Deserialize, Serialize};

use super::{backup::write_backup, RotationPolicy};
use crate::lifecycle::Lifecycle;
use crate::{CoreError, Event, Events};

/// The persisted progress of one key's rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RotationJob {
    /// The version being made.
    pub target: KeyVersion,
    /// `backup` (nothing done yet) or `generate` (backup done or skipped).
    pub step: Step,
    /// Where the backup went, or why there is none.
    pub backup: Option<String>,
    /// When the rotation began.
    pub started_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Step {
    Backup,
    Generate,
}

fn policy_setting(key: &KeyName) -> String {
    format!("rotation_policy:{key}")
}

const JOB_PREFIX: &str = "rotation_job:";

fn job_setting(key: &KeyName) -> String {
    format!("{JOB_PREFIX}{key}")
}

/// Rotations and their policies.
#[derive(Debug)]
pub(crate) struct Rotator {
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) events: Events,
    /// A test hook: stop forever at this step (see [`Rotator::pause_point`]).
    pub(crate) pause_at: Option<String>,
}

impl Rotator {
    fn store(&self) -> &Arc<dyn Store> {
        &self.lifecycle.store
    }

    /// With a pause step set (the binary sets it from `CUSTOS_PAUSE_AT` in debug builds only), prints
    /// `custos: paused at <step>` to standard error and stops there, so a test can kill -9 the process at
    /// exactly that step.
    async fn pause_point(&self, step: &str) {
        if self.pause_at.as_deref() == Some(step) {
            eprintln!("custos: paused at {step}");
            std::future::pending::<()>().await;
        }
    }

    /// A key's rotation policy, if it has one.
    pub(crate) async fn policy(&self, name: &KeyName) -> Result<Option<RotationPolicy>, CoreError> {
        match self.store().get_setting(&policy_setting(name)).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::Internal(format!("rotation policy of {name}: {e}"))
            })?)),
        }
    }

    /// Stores (or with `None` removes) a validated policy.
    pub(crate) async fn set_policy(
        &self,
        name: &KeyName,
        policy: Option<&RotationPolicy>,
    ) -> Result<(), CoreError> {
        match policy {
            Some(policy) => {
                policy.validate()?;
                let bytes =
                    serde_json::to_vec(policy).map_err(|e| CoreError::Internal(e.to_string()))?;
                self.store()
                    .put_setting(&policy_setting(name), &bytes)
                    .await?;
            }
            None => self.store().delete_setting(&policy_setting(name)).await?,
        }
        Ok(())
    }

    /// Keys whose rotation a crash (or a failure) left unfinished.
    pub(crate) async fn unfinished(&self) -> Result<Vec<KeyName>, CoreError> {
        self.store()
            .list_settings(JOB_PREFIX)
            .await?
            .into_iter()
            .map(|(setting, _)| Ok(KeyName::new(setting.trim_start_matches(JOB_PREFIX))?))
            .collect()
    }

    /// Rotates by the persisted state machine: resumes a recorded job, or starts one. Returns the key
    /// and where its backup went (or why there is none).
    pub(crate) async fn rotate(
        &self,
        name: &KeyName,
    ) -> Result<(Arc<KeyRecord>, String), CoreError> {
        let lifecycle = &self.lifecycle;
        let _guard = lifecycle.admin.lock().await;
        let key = lifecycle.registry.get(name)?;
        if key.kind == KeyKind::Bip32 {
            return Err(CoreError::bad(
                ErrorCode::NotSupported,
                "a BIP32 master is not rotated: its children are the rotation (derive another path)",
            ));
        }
        if !key.state.is_usable() {
            return Err(CoreError::KeyUnusable {
                key: name.to_string(),
                state: key.state,
            });
        }
        let policy = self.policy(name).await?;
        let mut job = match self.store().get_setting(&job_setting(name)).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CoreError::Internal(format!("rotation job of {name}: {e}")))?,
            None => {
                let highest = key
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .max()
                    .unwrap_or(KeyVersion(0));
                let target = highest.next().ok_or_else(|| {
                    CoreError::bad(
                        ErrorCode::VersionLimit,
                        "the key has no version numbers left",
                    )
                })?;
                let job = RotationJob {
                    target,
                    step: Step::Backup,
                    backup: None,
                    started_at: lifecycle.clock.now(),
                };
                self.save_job(name, &job).await?;
                job
            }
        };
        self.pause_point("rotation:started").await;
        if job.step == Step::Backup {
            job.backup = Some(match policy.as_ref().filter(|p| p.backup_enabled) {
                Some(policy) => self.backup(&key, policy).await?,
                None => "backups are off for this key".to_owned(),
            });
            job.step = Step::Generate;
            self.save_job(name, &job).await?;
            self.pause_point("rotation:backed_up").await;
        }
        if key.version(job.target).is_none() {
            let version = lifecycle
                .new_version(name, key.algorithm, &key.providers, job.target)
                .await?;
            self.pause_point("rotation:generated").await;
            self.store()
                .add_current_version(name, &version, VersionState::Enabled)
                .await?;
            self.pause_point("rotation:committed").await;
        }
        self.store().delete_setting(&job_setting(name)).await?;
        let updated = lifecycle.registry.reload(name).await?;
        let backup = job.backup.unwrap_or_default();
        tracing::info!(key = %name, version = %job.target, %backup, "key rotated");
        self.events.emit(Event::KeyRotated {
            key: name.to_string(),
            version: job.target.0,
            backup: backup.clone(),
        });
        Ok((updated, backup))
    }

    async fn save_job(&self, name: &KeyName, job: &RotationJob) -> Result<(), CoreError> {
        let bytes = serde_json::to_vec(job)
            .map_err(|e| CoreError::Internal(format!("rotation job: {e}")))?;
        Ok(self.store().put_setting(&job_setting(name), &bytes).await?)
    }

    /// Backs up the current version before a rotation: the age-encrypted key where a provider of the chain
    /// lets it leave, otherwise the recorded reason there is none.
    async fn backup(&self, key: &KeyRecord, policy: &RotationPolicy) -> Result<String, CoreError> {
        let current = key.current().ok_or_else(|| {
            CoreError::Internal(format!("key {} has no current version", key.name))
        })?;
        let chain = &self.lifecycle.chain;
        let exportable = current.locations.iter().find_map(|l| {
            chain
                .get(&l.provider)
                .filter(|p| p.capabilities().exportable)
                .map(|p| (Arc::clone(p), l))
        });
        let Some((provider, location)) = exportable else {
            return Ok(format!(
                "no backup file: version {} lives only in providers that never let a key leave ({}); \
                 back it up with the provider's own means (HSM backup, KMS multi-region keys)",
                current.version,
                current
                    .locations
                    .iter()
                    .map(|l| l.provider.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let private = provider.export(&location.handle).await?;
        if private.public_key() != current.public_key {
            return Err(CoreError::Internal(
                "the exported key does not match the version's public key".into(),
            ));
        }
        let (policy, name, version) = (policy.clone(), key.name.clone(), current.version);
        let now = self.lifecycle.clock.now();
        let path = tokio::task::spawn_blocking(move || {
            write_backup(&policy, &name, version, &private, now)
        })
        .await
        .map_err(|e| CoreError::Internal(format!("backup task failed: {e}")))??;
        Ok(path.display().to_string())
    }
}
