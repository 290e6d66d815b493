//! Rotation: rotate now, rotation policies (backup settings are custody settings: admin only), the
//! scheduler pass (due rotations, overlaps that ended, deletions that came due), and the supervised
//! scheduler task that health reports on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custos_types::{KeyName, KeyRecord, KeyState, Timestamp, VersionState};

use super::KeyManager;
use crate::{audited, CoreError, Event, Operation, RequestContext, RotationPolicy};

/// How the rotation scheduler is doing, for `/v1/health` and the metrics.
#[derive(Debug, Default)]
pub struct SchedulerHealth {
    running: AtomicBool,
    last_pass_failed: AtomicBool,
    failures: AtomicU64,
}

impl SchedulerHealth {
    /// Whether the scheduler runs and its last pass succeeded (true when it is not configured to run).
    pub fn is_healthy(&self) -> bool {
        !self.running.load(Ordering::Relaxed) || !self.last_pass_failed.load(Ordering::Relaxed)
    }

    /// Passes that failed (an error or a panic) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl KeyManager {
    /// Makes a new version current in every provider of the chain; the previous one stays enabled.
    pub async fn rotate(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_rotate");
        entry.key = Some(name.to_string());
        let work = async {
            let rotated = self.rotator.rotate(name).await;
            if rotated.is_ok() {
                self.metrics.rotations.inc();
            }
            rotated
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::RotateKey(name.as_str()),
            entry,
            work,
            |(key, backup), e| {
                if let Some(current) = key.current() {
                    e.version = Some(current.version.0);
                    e.provider = current.locations.first().map(|l| l.provider.to_string());
                }
                e.subject = Some(backup.chars().take(300).collect());
            },
        )
        .await
        .map(|(key, _)| key)
    }

    /// A key's rotation policy, if it has one; needs `keys:read`.
    pub async fn rotation_policy(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
    ) -> Result<Option<RotationPolicy>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("rotation_policy_read")
        })
        .await?;
        self.registry().get(name)?;
        self.rotator.policy(name).await
    }

    /// When a key is next due to rotate, if it has a policy; needs `keys:read`.
    pub async fn next_rotation(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
    ) -> Result<Option<Timestamp>, CoreError> {
        let Some(policy) = self.rotation_policy(ctx, name).await? else {
            return Ok(None);
        };
        let key = self.registry().get(name)?;
        let made = key.current().map_or(key.created_at, |v| v.created_at);
        policy.due_after(made).map(Some)
    }

    /// Sets (or with `None` removes) a key's rotation policy. The schedule needs `keys:rotate`; a change
    /// of the backup settings (whether backups are written, to which recipient, where) is a custody
    /// change and needs `admin`. Every field is validated before anything is stored. Returns when the
    /// key is next due to rotate under the new policy.
    pub async fn set_rotation_policy(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        policy: Option<RotationPolicy>,
    ) -> Result<Option<Timestamp>, CoreError> {
        let mut entry = ctx.entry("rotation_policy");
        entry.key = Some(name.to_string());
        entry.subject = Some(match &policy {
            Some(p) => format!(
                "every {} days at {} {}{}",
                p.interval_days,
                p.rotation_time,
                p.time_zone,
                if p.backup_enabled {
                    format!(
                        ", backups to {} in {}",
                        p.backup_recipient.as_deref().unwrap_or("?"),
                        p.backup_location
                            .as_deref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_default()
                    )
                } else {
                    String::new()
                }
            ),
            None => "removed".into(),
        });
        self.registry().get(name)?;
        let stored = self.rotator.policy(name).await?;
        let backup = |p: Option<&RotationPolicy>| {
            p.map(|p| {
                (
                    p.backup_enabled,
                    p.backup_location.clone(),
                    p.backup_recipient.clone(),
                )
            })
            .unwrap_or_default()
        };
        let backup_changes = backup(policy.as_ref()) != backup(stored.as_ref());
        let op = if backup_changes {
            Operation::Custody(name.as_str())
        } else {
            Operation::RotateKey(name.as_str())
        };
        let work = async {
            self.rotator.set_policy(name, policy.as_ref()).await?;
            let key = self.registry().get(name)?;
            let made = key.current().map_or(key.created_at, |v| v.created_at);
            policy.as_ref().map(|p| p.due_after(made)).transpose()
        };
        audited::run(&self.audit, ctx, op, entry, work, |_, _| {}).await
    }

    /// Finishes every rotation a crash interrupted. Run once at start, before serving. A rotation that
    /// cannot be finished now (its backup directory is gone, a provider is down) is logged, sent as a
    /// `rotation_failed` event and left recorded for the next attempt; it does not stop the start.
    /// Returns how many were finished and how many are still pending.
    pub async fn resume_rotations(
        &self,
        ctx: &RequestContext,
    ) -> Result<(usize, usize), CoreError> {
        let (mut finished, mut pending) = (0, 0);
        for name in self.rotator.unfinished().await? {
            tracing::warn!(key = %name, "resuming an interrupted rotation");
            match self.rotate(ctx, &name).await {
                Ok(_) => finished += 1,
                Err(e) => {
                    pending += 1;
                    tracing::error!(key = %name, error = %e, "cannot finish an interrupted rotation yet");
                    self.events.emit(Event::RotationFailed {
                        key: name.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok((finished, pending))
    }

    /// One pass of the scheduler: if `holder` holds (or can take) the rotation lease, finish unfinished
    /// rotations, rotate every key whose policy says it is due, make versions whose overlap has ended
    /// verify-only, and destroy keys whose deletion date has come. Returns the keys rotated. Failures
    /// of one key are logged, sent as events, and retried at the next pass.
    pub async fn run_scheduled(
        &self,
        ctx: &RequestContext,
        holder: &str,
        lease: Duration,
    ) -> Result<Vec<KeyName>, CoreError> {
        let now = self.clock.now();
        let until = now
            .checked_add(
                jiff::SignedDuration::try_from(lease).unwrap_or(jiff::SignedDuration::ZERO),
            )
            .unwrap_or(now);
        if !self
            .store
            .acquire_lease("rotation", holder, now, until)
            .await?
        {
            return Ok(Vec::new());
        }
        let mut rotated = Vec::new();
        let failed = |name: &KeyName, e: &CoreError, what: &str| {
            tracing::error!(key = %name, error = %e, "{what}");
            self.events.emit(Event::RotationFailed {
                key: name.to_string(),
                error: e.to_string(),
            });
        };
        for name in self.rotator.unfinished().await? {
            match self.rotate(ctx, &name).await {
                Ok(_) => rotated.push(name),
                Err(e) => failed(&name, &e, "an unfinished rotation failed again"),
            }
        }
        for key in self.registry().list()? {
            if let KeyState::PendingDeletion { at } = key.state {
                if at <= now {
                    if let Err(e) = self.destroy_due(ctx, &key.name).await {
                        tracing::error!(key = %key.name, error = %e, "cannot destroy a key whose deletion came due");
                    }
                }
                continue;
            }
            if !key.state.is_usable() {
                continue;
            }
            let Some(policy) = self.rotator.policy(&key.name).await? else {
                continue;
            };
            if let Err(e) = self.retire_overlapped(ctx, &key, &policy).await {
                tracing::error!(key = %key.name, error = %e, "cannot end an overlap period");
            }
            let made = key.current().map_or(key.created_at, |v| v.created_at);
            match policy.due_after(made) {
                Ok(due) if due > now => continue,
                Ok(_) => {}
                Err(e) => {
                    failed(&key.name, &e, "a rotation policy has no due date");
                    continue;
                }
            }
            match self.rotate(ctx, &key.name).await {
                Ok(_) => rotated.push(key.name.clone()),
                Err(e) => failed(&key.name, &e, "scheduled rotation failed"),
            }
        }
        self.destroy_due_records(ctx, now).await;
        Ok(rotated)
    }

    /// Destroys a key whose scheduled deletion came due: every version is destroyed and the key can
    /// never sign or verify again. The provider's key material stays where it is (an HSM's own
    /// deletion is the operator's); the record says so.
    async fn destroy_due(&self, ctx: &RequestContext, name: &KeyName) -> Result<(), CoreError> {
        let mut entry = ctx.entry("key_destroy");
        entry.key = Some(name.to_string());
        entry.subject = Some("its scheduled deletion came due".into());
        audited::run(
            &self.audit,
            ctx,
            Operation::DeleteKey(name.as_str()),
            entry,
            self.lifecycle.set_state(name, KeyState::Destroyed),
            |_, _| {},
        )
        .await
        .map(|_| ())
    }

    /// Makes `enabled` versions verify-only (`disabled`) once the overlap after their replacement ended.
    async fn retire_overlapped(
        &self,
        ctx: &RequestContext,
        key: &KeyRecord,
        policy: &RotationPolicy,
    ) -> Result<(), CoreError> {
        let now = self.clock.now();
        for version in key
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Enabled)
        {
            let replaced = key
                .versions
                .iter()
                .filter(|v| v.version > version.version)
                .map(|v| v.created_at)
                .min();
            if replaced.is_some_and(|at| policy.overlap_ends(at) <= now) {
                let mut entry = ctx.entry("version_disable");
                entry.key = Some(key.name.to_string());
                entry.version = Some(version.version.0);
                entry.subject = Some("overlap period ended: verify-only".into());
                audited::run(
                    &self.audit,
                    ctx,
                    Operation::RotateKey(key.name.as_str()),
                    entry,
                    self.lifecycle.set_version_state(
                        &key.name,
                        version.version,
                        VersionState::Disabled,
                    ),
                    |_, _| {},
                )
                .await?;
            }
        }
        Ok(())
    }

    /// The scheduler's health.
    pub fn scheduler_health(&self) -> &SchedulerHealth {
        &self.scheduler
    }

    /// Runs the scheduler every `every` until the returned task is aborted. Each pass runs as its own
    /// task, so an error or a panic in one pass is counted, reported by [`SchedulerHealth`] (and so by
    /// `/v1/health`), and the next pass runs as usual.
    pub fn spawn_scheduler(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let manager = Arc::clone(self);
        let mut id = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let holder = format!("{}-{}", std::process::id(), hex::encode(id));
        manager.scheduler.running.store(true, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let (pass_manager, holder) = (Arc::clone(&manager), holder.clone());
                // The lease outlives a few missed checks, so a busy holder keeps it.
                let pass = tokio::spawn(async move {
                    let ctx = RequestContext::system("rotation");
                    pass_manager.run_scheduled(&ctx, &holder, every * 3).await
                })
                .await;
                let health = &manager.scheduler;
                let failure = match pass {
                    Ok(Ok(rotated)) => {
                        if !rotated.is_empty() {
                            tracing::info!(?rotated, "scheduled rotation done");
                        }
                        None
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("the pass panicked: {e}")),
                };
                match failure {
                    None => health.last_pass_failed.store(false, Ordering::Relaxed),
                    Some(why) => {
                        health.last_pass_failed.store(true, Ordering::Relaxed);
                        health.failures.fetch_add(1, Ordering::Relaxed);
                        manager.metrics.scheduler_failures.inc();
                        tracing::error!(error = %why, "rotation scheduler pass failed; the next runs as usual");
                    }
                }
            }
        })
    }
}
