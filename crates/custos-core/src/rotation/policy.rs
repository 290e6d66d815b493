//! Rotation policies and their schedule in the operator's time zone.
//!
//! A policy says: every `interval_days` days at `rotation_time` in `time_zone` (IANA names), make a new
//! version current; keep the previous version able to sign (when asked for by version) for `overlap_days`,
//! then make it verify-only (`disabled`). With `backup_enabled`, the current version's private key, where a
//! provider lets it leave, is first written as an age file encrypted to `backup_recipient` (an X25519
//! `age1…` public key) into the directory `backup_location`.
//! Every numeric field has a documented range, checked before anything is stored: `interval_days`
//! 1 ..= 3650, `overlap_days` 0 ..= `interval_days` - 1.

use std::path::PathBuf;

use custos_types::{ErrorCode, Timestamp};
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// The longest rotation interval: ten years.
pub const MAX_INTERVAL_DAYS: u32 = 3650;

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
        let bad = |m: String| CoreError::bad(ErrorCode::InvalidRotationPolicy, m);
        if !(1..=MAX_INTERVAL_DAYS).contains(&self.interval_days) {
            return Err(bad(format!(
                "interval_days must be between 1 and {MAX_INTERVAL_DAYS}, not {}",
                self.interval_days
            )));
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
                ErrorCode::InvalidRotationPolicy,
                format!("rotation_time {:?} is not HH:MM:SS", self.rotation_time),
            )
        })
    }

    fn zone(&self) -> Result<jiff::tz::TimeZone, CoreError> {
        jiff::tz::TimeZone::get(&self.time_zone).map_err(|_| {
            CoreError::bad(
                ErrorCode::InvalidRotationPolicy,
                format!(
                    "time_zone {:?} is not an IANA time zone name (like Europe/Berlin)",
                    self.time_zone
                ),
            )
        })
    }

    pub(crate) fn recipient(&self) -> Result<age::x25519::Recipient, CoreError> {
        let text = self.backup_recipient.as_deref().unwrap_or_default();
        text.parse().map_err(|_| {
            CoreError::bad(
                ErrorCode::InvalidRotationPolicy,
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
            .checked_add(
                jiff::Span::new()
                    .try_days(i64::from(self.interval_days))
                    .map_err(|e| CoreError::bad(ErrorCode::InvalidRotationPolicy, e.to_string()))?,
            )
            .map_err(|e| CoreError::bad(ErrorCode::InvalidRotationPolicy, e.to_string()))?;
        Ok(date
            .to_datetime(self.time()?)
            .to_zoned(zone)
            .map_err(|e| CoreError::bad(ErrorCode::InvalidRotationPolicy, e.to_string()))?
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
    fn the_longest_interval_has_a_due_date() {
        let made: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let p = policy("UTC", "00:00:00", MAX_INTERVAL_DAYS);
        p.validate().unwrap();
        assert!(p.due_after(made).unwrap() > made);
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (p, needle) in [
            (policy("Mars/Olympus", "00:00:00", 30), "time_zone"),
            (policy("UTC", "25:00:00", 30), "rotation_time"),
            (policy("UTC", "00:00:00", 0), "interval_days"),
            (policy("UTC", "00:00:00", 4_294_967_295), "interval_days"),
            (
                policy("UTC", "00:00:00", MAX_INTERVAL_DAYS + 1),
                "interval_days",
            ),
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
            assert_eq!(err.code(), ErrorCode::InvalidRotationPolicy);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
