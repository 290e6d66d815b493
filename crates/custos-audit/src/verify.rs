//! The offline verifier of an audit export: the chain, every checkpoint, and the closing seal.

use std::fmt;

use custos_types::{PublicKey, SignPayload, SignatureFormat};

use crate::{Checkpoint, ExportLine, Head};

/// What a good export contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last sequence number, vouched for by the closing checkpoint.
    pub last_seq: u64,
}

/// The first thing wrong with an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The line (from 1) where it was found.
    pub line: usize,
    /// The first bad record's sequence number, when one can be named.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "line {}, record {seq}: {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

impl std::error::Error for VerifyFailure {}

fn fail<T>(line: usize, seq: Option<u64>, reason: impl Into<String>) -> Result<T, VerifyFailure> {
    Err(VerifyFailure {
        line,
        seq,
        reason: reason.into(),
    })
}

fn hash_of(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// Checks an export (JSON lines, records and checkpoints, from record 1) against the audit public key.
///
/// Names the first bad record for a modified record, a deleted or inserted one, records out of order, a
/// forged or mismatched checkpoint, and records after the last checkpoint (a truncated or unsealed export).
pub fn verify_export(text: &str, audit_key: &PublicKey) -> Result<VerifyReport, VerifyFailure> {
    let mut head = Head::GENESIS;
    let mut hashes: Vec<[u8; 32]> = Vec::new(); // hashes[i] is record i + 1
    let (mut records, mut checkpoints) = (0u64, 0u64);
    let mut sealed_up_to: Option<u64> = None;
    let mut last_line = 0;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        last_line = number;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = match serde_json::from_str(line) {
            Ok(parsed) => parsed,
            Err(e) => {
                return fail(
                    number,
                    None,
                    format!("not an audit record or checkpoint: {e}"),
                )
            }
        };
        match parsed {
            ExportLine::Record(record) => {
                let expected = head.seq + 1;
                if record.seq < expected {
                    return fail(
                        number,
                        Some(record.seq),
                        format!("out of order or duplicated: expected record {expected}"),
                    );
                }
                if record.seq > expected {
                    return fail(
                        number,
                        Some(expected),
                        format!(
                            "missing here (deleted or moved): the log jumps from record {} to {}",
                            head.seq, record.seq
                        ),
                    );
                }
                if record.prev_hash != hex::encode(head.hash) {
                    return fail(number, Some(record.seq), "does not follow the record before it (inserted, reordered, or the previous record was changed)");
                }
                let computed = record.compute_hash();
                if hash_of(&record.hash) != Some(computed) {
                    return fail(
                        number,
                        Some(record.seq),
                        "modified: its hash does not match its contents",
                    );
                }
                head = Head {
                    seq: record.seq,
                    hash: computed,
                };
                hashes.push(computed);
                records += 1;
            }
            ExportLine::Checkpoint(checkpoint) => {
                check_checkpoint(number, &checkpoint, head, &hashes, audit_key)?;
                sealed_up_to = Some(checkpoint.seq);
                checkpoints += 1;
            }
        }
    }
    match sealed_up_to {
        Some(seq) if seq == head.seq => Ok(VerifyReport { records, checkpoints, last_seq: head.seq }),
        Some(seq) => fail(last_line, Some(seq + 1), format!("records {}..={} are not covered by a checkpoint: the export was truncated or not sealed", seq + 1, head.seq)),
        None => fail(last_line, (head.seq > 0).then_some(1), "no checkpoint: the export was truncated or not sealed"),
    }
}

fn check_checkpoint(
    line: usize,
    checkpoint: &Checkpoint,
    head: Head,
    hashes: &[[u8; 32]],
    audit_key: &PublicKey,
) -> Result<(), VerifyFailure> {
    let Some(hash) = hash_of(&checkpoint.head_hash) else {
        return fail(line, None, "checkpoint head hash is not 32 bytes of hex");
    };
    let signature = hex::decode(&checkpoint.signature).unwrap_or_default();
    let message = Checkpoint::message(&Head {
        seq: checkpoint.seq,
        hash,
    });
    if audit_key
        .verify(
            &SignPayload::Message(message),
            &signature,
            SignatureFormat::Raw,
        )
        .is_err()
    {
        return fail(
            line,
            None,
            format!(
                "checkpoint at record {} has a bad signature (forged, or another audit key)",
                checkpoint.seq
            ),
        );
    }
    if checkpoint.seq > head.seq {
        return fail(
            line,
            Some(head.seq + 1),
            format!(
                "checkpoint covers record {} but the records end at {} (records removed)",
                checkpoint.seq, head.seq
            ),
        );
    }
    let recorded = match checkpoint.seq {
        0 => Head::GENESIS.hash,
        seq => hashes[(seq - 1) as usize],
    };
    if recorded != hash {
        return fail(line, None, format!("records 1..={} disagree with the signed checkpoint (changed and re-hashed, removed or inserted)", checkpoint.seq));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditEntry, AuditRecord};
    use custos_types::{Algorithm, Timestamp};
    use ed25519_dalek::Signer as _;

    struct Log {
        key: ed25519_dalek::SigningKey,
        lines: Vec<ExportLine>,
        head: Head,
    }

    impl Log {
        fn new() -> Log {
            Log {
                key: ed25519_dalek::SigningKey::from_bytes(&[42; 32]),
                lines: Vec::new(),
                head: Head::GENESIS,
            }
        }
        fn public(&self) -> PublicKey {
            PublicKey::from_bytes(Algorithm::Ed25519, self.key.verifying_key().as_bytes()).unwrap()
        }
        fn record(&mut self, operation: &str) {
            let time: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
            let mut entry = AuditEntry::new(operation);
            entry.key = Some(format!("key-{}", self.head.seq));
            let record = AuditRecord::seal(self.head, time, entry);
            self.head = record.head().unwrap();
            self.lines.push(ExportLine::Record(record));
        }
        fn checkpoint(&mut self) {
            let signature = self.key.sign(&Checkpoint::message(&self.head)).to_bytes();
            self.lines.push(ExportLine::Checkpoint(Checkpoint {
                seq: self.head.seq,
                head_hash: hex::encode(self.head.hash),
                time: "2026-11-21T12:00:00Z".parse().unwrap(),
                signature: hex::encode(signature),
            }));
        }
        fn text(lines: &[ExportLine]) -> String {
            lines
                .iter()
                .map(|l| serde_json::to_string(l).unwrap() + "\n")
                .collect()
        }
    }

    /// Ten records with a checkpoint after the fifth and a sealing checkpoint at the end.
    fn sample() -> Log {
        let mut log = Log::new();
        for i in 0..10 {
            log.record(if i % 2 == 0 { "sign" } else { "verify" });
            if i == 4 {
                log.checkpoint();
            }
        }
        log.checkpoint();
        log
    }

    fn record_mut(lines: &mut [ExportLine], seq: u64) -> &mut AuditRecord {
        lines
            .iter_mut()
            .find_map(|l| match l {
                ExportLine::Record(r) if r.seq == seq => Some(r),
                _ => None,
            })
            .unwrap()
    }

    fn index_of(lines: &[ExportLine], seq: u64) -> usize {
        lines
            .iter()
            .position(|l| matches!(l, ExportLine::Record(r) if r.seq == seq))
            .unwrap()
    }

    #[test]
    fn an_intact_export_verifies() {
        let log = sample();
        let report = verify_export(&Log::text(&log.lines), &log.public()).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                records: 10,
                checkpoints: 2,
                last_seq: 10
            }
        );
    }

    #[test]
    fn tampering_is_found_and_named() {
        let log = sample();
        let key = log.public();
        let check = |lines: &[ExportLine]| verify_export(&Log::text(lines), &key).unwrap_err();

        // Modification.
        let mut lines = log.lines.clone();
        record_mut(&mut lines, 3).entry.key = Some("forged".into());
        let err = check(&lines);
        assert_eq!(err.seq, Some(3), "{err}");
        assert!(err.reason.contains("modified"), "{err}");

        // Modification with the hash recomputed, and the chain re-linked after it: the checkpoint catches it.
        let mut lines = log.lines.clone();
        let mut head = Head::GENESIS;
        for line in lines.iter_mut() {
            if let ExportLine::Record(r) = line {
                if r.seq == 3 {
                    r.entry.key = Some("forged".into());
                }
                *r = AuditRecord::seal(head, r.time, r.entry.clone());
                head = r.head().unwrap();
            }
        }
        let err = check(&lines);
        assert!(
            err.reason.contains("disagree with the signed checkpoint"),
            "{err}"
        );

        // Deletion.
        let mut lines = log.lines.clone();
        lines.remove(index_of(&lines, 4));
        let err = check(&lines);
        assert_eq!(err.seq, Some(4), "{err}");
        assert!(err.reason.contains("missing"), "{err}");

        // Insertion of a forged record with a fitting sequence number.
        let mut lines = log.lines.clone();
        let at = index_of(&lines, 7);
        let mut forged = record_mut(&mut lines, 7).clone();
        forged.entry.operation = "key_create".into();
        lines.insert(at, ExportLine::Record(forged));
        let err = check(&lines);
        assert_eq!(err.seq, Some(7), "{err}");

        // Reordering.
        let mut lines = log.lines.clone();
        let (a, b) = (index_of(&lines, 8), index_of(&lines, 9));
        lines.swap(a, b);
        let err = check(&lines);
        assert_eq!(err.seq, Some(8), "{err}");
        assert!(err.reason.contains("moved"), "{err}");

        // Truncation after the last checkpoint: the seal is gone and records 6.. are unvouched.
        let mut lines = log.lines.clone();
        lines.truncate(index_of(&lines, 9));
        let err = check(&lines);
        assert_eq!(err.seq, Some(6), "{err}");
        assert!(err.reason.contains("truncated"), "{err}");

        // A forged checkpoint, and a real export checked with another key.
        let mut lines = log.lines.clone();
        if let Some(ExportLine::Checkpoint(c)) = lines.last_mut() {
            c.signature = hex::encode([0u8; 64]);
        }
        assert!(check(&lines).reason.contains("bad signature"));
        let other = PublicKey::from_bytes(
            Algorithm::Ed25519,
            ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                .verifying_key()
                .as_bytes(),
        )
        .unwrap();
        assert!(verify_export(&Log::text(&log.lines), &other).is_err());
        assert!(verify_export("not json\n", &key)
            .unwrap_err()
            .reason
            .contains("not an audit record"));
    }
}
