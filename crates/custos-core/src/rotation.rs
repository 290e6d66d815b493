//! Rotation policies, their schedule in the operator's time zone, encrypted backups before rotation, and
//! the persisted rotation job that a crash at any step resumes from.
//!
//! A policy says: every `interval_days` days at `rotation_time` in `time_zone` (IANA names), make a new
//! version current; keep the previous version able to sign (when asked for by version) for `overlap_days`,
//! then make it verify-only (`disabled`). With `backup_enabled`, the current version's private key, where a
//! provider lets it leave, is first written as an age file encrypted to `backup_recipient` (an X25519
//! `age1…` public key) into the directory `backup_location`.
//!
//! The job record (`rotation_job:<key>` in the store) names the target version and the step reached:
//! `backup` → `generate` → done. Committing the new version is one store transaction that also demotes
//! the old one, and the target number must be one above the highest, so resuming never makes two current
//! versions nor skips one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use custos_types::{KeyName, KeyVersion, PrivateKey, Timestamp};
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// A key's rotation settings. The fields also take the seed's camelCase names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    /// Days between rotations (at least 1).
    #[serde(alias = "intervalDays")]
    pub interval_days: u32,
    /// Days the previous version may still sign (by explicit version) after a rotation.
    #[serde(default, alias = "overlapDays")]
    pub overlap_days: u32,
    /// The local time of day rotations happen, `HH:MM:SS` (default midnight).
    #[serde(default = "midnight", alias = "rotationTime")]
    pub rotation_time: String,
    /// The IANA time zone of `rotation_time` (default `UTC`).
    #[serde(default = "utc", alias = "timeZone")]
    pub time_zone: String,
    /// Back up the current version before each rotation.
    #[serde(default, alias = "backupEnabled")]
    pub backup_enabled: bool,
    /// The directory backups are written to.
    #[serde(
        default,
        alias = "backupLocation",
        skip_serializing_if = "Option::is_none"
    )]
    pub backup_location: Option<PathBuf>,
    /// The age X25519 recipient (`age1…`) backups are encrypted to; its identity stays offline.
    #[serde(
        default,
        alias = "backupRecipient",
        skip_serializing_if = "Option::is_none"
    )]
    pub backup_recipient: Option<String>,
}

fn midnight() -> String {
    "00:00:00".into()
}
fn utc() -> String {
    "UTC".into()
}

impl RotationPolicy {
    /// Checks every field; the error says which one is wrong and how.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |m: String| CoreError::bad("invalid_rotation_policy", m);
        if self.interval_days == 0 {
            return Err(bad("interval_days must be at least 1".into()));
        }
        if self.overlap_days >= self.interval_days {
            return Err(bad(format!(
                "overlap_days ({}) must be less than interval_days ({})",
                self.overlap_days, self.interval_days
            )));
        }
        self.time()?;
        self.zone()?;
        if self.backup_enabled {
            let Some(dir) = &self.backup_location else {
                return Err(bad(
                    "backup_enabled needs backup_location (a directory)".into()
                ));
            };
            if dir.to_string_lossy().contains("://") {
                return Err(bad(format!(
                    "backup_location {} is a URL; give a local directory (mount the bucket there)",
                    dir.display()
                )));
            }
            self.recipient()?;
        }
        Ok(())
    }

    fn time(&self) -> Result<jiff::civil::Time, CoreError> {
        self.rotation_time.parse().map_err(|_| {
            CoreError::bad(
                "invalid_rotation_policy",
                format!("rotation_time {:?} is not HH:MM:SS", self.rotation_time),
            )
        })
    }

    fn zone(&self) -> Result<jiff::tz::TimeZone, CoreError> {
        jiff::tz::TimeZone::get(&self.time_zone).map_err(|_| {
            CoreError::bad(
                "invalid_rotation_policy",
                format!(
                    "time_zone {:?} is not an IANA time zone name (like Europe/Berlin)",
                    self.time_zone
                ),
            )
        })
    }

    fn recipient(&self) -> Result<age::x25519::Recipient, CoreError> {
        let text = self.backup_recipient.as_deref().unwrap_or_default();
        text.parse().map_err(|_| {
            CoreError::bad(
                "invalid_rotation_policy",
                format!("backup_recipient {text:?} is not an age X25519 recipient (age1…)"),
            )
        })
    }

    /// When a version made at `made` is due to be replaced: `interval_days` calendar days later, at
    /// `rotation_time` in `time_zone` (a time that a DST change skips moves forward, as a wall clock does).
    pub fn due_after(&self, made: Timestamp) -> Result<Timestamp, CoreError> {
        let zone = self.zone()?;
        let date = made
            .to_zoned(zone.clone())
            .date()
            .checked_add(jiff::Span::new().days(i64::from(self.interval_days)))
            .map_err(|e| CoreError::bad("invalid_rotation_policy", e.to_string()))?;
        Ok(date
            .to_datetime(self.time()?)
            .to_zoned(zone)
            .map_err(|e| CoreError::bad("invalid_rotation_policy", e.to_string()))?
            .timestamp())
    }

    /// When a version that stopped being current at `replaced` becomes verify-only.
    pub fn overlap_ends(&self, replaced: Timestamp) -> Timestamp {
        replaced
            .checked_add(jiff::SignedDuration::from_hours(
                24 * i64::from(self.overlap_days),
            ))
            .unwrap_or(replaced)
    }
}

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

pub(crate) fn policy_setting(key: &KeyName) -> String {
    format!("rotation_policy:{key}")
}

pub(crate) const JOB_PREFIX: &str = "rotation_job:";

pub(crate) fn job_setting(key: &KeyName) -> String {
    format!("{JOB_PREFIX}{key}")
}

/// A test hook in debug builds only: with `CUSTOS_PAUSE_AT=<step>`, the process prints
/// `custos: paused at <step>` to standard error and stops there, so a test can kill -9 it at exactly that
/// step. Release builds compile it to nothing.
pub(crate) async fn pause_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("CUSTOS_PAUSE_AT").is_ok_and(|v| v == step) {
        eprintln!("custos: paused at {step}");
        std::future::pending::<()>().await;
    }
    let _ = step;
}

/// Writes `key` as a PKCS#8 PEM document encrypted to the policy's age recipient into the backup
/// directory (file mode 0600, written to a temporary name, synced, then renamed), and returns the path.
pub(crate) fn write_backup(
    policy: &RotationPolicy,
    name: &KeyName,
    version: KeyVersion,
    key: &PrivateKey,
) -> Result<PathBuf, CoreError> {
    let recipient = policy.recipient()?;
    let dir = policy
        .backup_location
        .as_deref()
        .ok_or_else(|| CoreError::bad("invalid_rotation_policy", "no backup_location"))?;
    let pem = key.to_pkcs8_pem()?;
    let encrypted = age::encrypt(&recipient, pem.as_bytes())
        .map_err(|e| CoreError::Internal(format!("age encryption failed: {e}")))?;
    let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let path = dir.join(format!("{name}-v{version}-{stamp}.age"));
    write_synced(dir, &path, &encrypted).map_err(|e| {
        CoreError::Unavailable(format!("cannot write the backup {}: {e}", path.display()))
    })?;
    Ok(path)
}

fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let partial = path.with_extension("age.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(zone: &str, time: &str, days: u32) -> RotationPolicy {
        RotationPolicy {
            interval_days: days,
            overlap_days: 0,
            rotation_time: time.into(),
            time_zone: zone.into(),
            backup_enabled: false,
            backup_location: None,
            backup_recipient: None,
        }
    }

    #[test]
    fn due_times_follow_the_local_calendar_and_clock() {
        // Made 2026-03-27 10:00 UTC; Berlin moves to summer time on 2026-03-29.
        let made: Timestamp = "2026-03-27T10:00:00Z".parse().unwrap();
        let due = policy("Europe/Berlin", "03:00:00", 2)
            .due_after(made)
            .unwrap();
        // 2026-03-29 03:00 in Berlin is CEST (UTC+2).
        assert_eq!(due.to_string(), "2026-03-29T01:00:00Z");
        // 02:30 does not exist that night: the wall clock jumps to 03:30 (UTC+2).
        let gap = policy("Europe/Berlin", "02:30:00", 2)
            .due_after(made)
            .unwrap();
        assert_eq!(gap.to_string(), "2026-03-29T01:30:00Z");
        let tokyo = policy("Asia/Tokyo", "00:00:00", 30)
            .due_after(made)
            .unwrap();
        assert_eq!(tokyo.to_string(), "2026-04-25T15:00:00Z");
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (p, needle) in [
            (policy("Mars/Olympus", "00:00:00", 30), "time_zone"),
            (policy("UTC", "25:00:00", 30), "rotation_time"),
            (policy("UTC", "00:00:00", 0), "interval_days"),
            (
                RotationPolicy {
                    overlap_days: 30,
                    ..policy("UTC", "00:00:00", 30)
                },
                "overlap_days",
            ),
            (
                RotationPolicy {
                    backup_enabled: true,
                    backup_location: Some("s3://bucket".into()),
                    ..policy("UTC", "00:00:00", 30)
                },
                "URL",
            ),
            (
                RotationPolicy {
                    backup_enabled: true,
                    backup_location: Some("/tmp".into()),
                    backup_recipient: Some("nope".into()),
                    ..policy("UTC", "00:00:00", 30)
                },
                "backup_recipient",
            ),
        ] {
            let err = p.validate().unwrap_err();
            assert_eq!(err.code(), "invalid_rotation_policy");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
