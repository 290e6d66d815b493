//! The encrypted backup written before a rotation: the current version's private key as PKCS#8 PEM,
//! encrypted to the policy's age recipient, written to a temporary name, synced, renamed (mode 0600).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use custos_types::{ErrorCode, KeyName, KeyVersion, PrivateKey, Timestamp};

use super::RotationPolicy;
use crate::CoreError;

/// Writes `key` encrypted to the policy's recipient into its backup directory; returns the path.
pub(crate) fn write_backup(
    policy: &RotationPolicy,
    name: &KeyName,
    version: KeyVersion,
    key: &PrivateKey,
    now: Timestamp,
) -> Result<PathBuf, CoreError> {
    let recipient = policy.recipient()?;
    let dir = policy
        .backup_location
        .as_deref()
        .ok_or_else(|| CoreError::bad(ErrorCode::InvalidRotationPolicy, "no backup_location"))?;
    let pem = key.to_pkcs8_pem()?;
    let encrypted = age::encrypt(&recipient, pem.as_bytes())
        .map_err(|e| CoreError::Internal(format!("age encryption failed: {e}")))?;
    let stamp = now.strftime("%Y%m%dT%H%M%SZ");
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
