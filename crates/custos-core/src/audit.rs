//! The audit log service: group-committed, hash-chained, fail-closed, with signed checkpoints.
//!
//! Callers `append` an entry and wait until it is durable. One writer task takes every waiting entry,
//! chains them, writes them in one store transaction (one fsync for the batch), and only then answers each
//! caller. A failed write answers every caller with an error, marks the log unhealthy, and is retried by
//! the next batch; the sign path refuses to sign while the log is unhealthy. Every `checkpoint_every`
//! records or `checkpoint_interval`, the writer signs the chain head with the audit key (an Ed25519 key in
//! the default provider) and stores the checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::AuditQuery;
use custos_audit::{payload_mac, AuditEntry, AuditRecord, Checkpoint, ExportLine, Head};
use custos_provider::KeyProvider;
use custos_store::Store;
use custos_types::{Algorithm, KeyHandle, PublicKey, SignPayload, SignatureFormat, Timestamp};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::{CoreError, Metrics};

/// Where else to copy every record, for shipping to a SIEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// One JSON line per record on standard output.
    Stdout,
    /// RFC 3164 datagrams to the local syslog socket (`/dev/log`).
    Syslog,
}

/// Audit settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Sign a checkpoint after this many records.
    pub checkpoint_every: u64,
    /// Sign a checkpoint at least this often while records arrive.
    pub checkpoint_interval: Duration,
    /// A second sink.
    pub sink: Option<AuditSink>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            sink: None,
        }
    }
}

/// The audit key as stored in the settings.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    provider: String,
    handle: String,
    public_key: String,
}

const SALT_SETTING: &str = "audit/salt";
const KEY_SETTING: &str = "audit/key";
const BATCH: usize = 512;

enum Request {
    Append(Box<AuditEntry>, oneshot::Sender<Result<u64, String>>),
    Seal(oneshot::Sender<Result<Checkpoint, String>>),
}

/// The audit log.
pub struct AuditLog {
    /// `None` only for [`AuditLog::discarding`].
    tx: Option<mpsc::Sender<Request>>,
    salt: Zeroizing<[u8; 32]>,
    public_key: PublicKey,
    healthy: Arc<AtomicBool>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

fn unavailable(detail: impl std::fmt::Display) -> CoreError {
    CoreError::AuditUnavailable(detail.to_string())
}

struct Signer {
    provider: Arc<dyn KeyProvider>,
    handle: KeyHandle,
    public_key: PublicKey,
}

impl Signer {
    async fn checkpoint(&self, head: Head) -> Result<Checkpoint, String> {
        let payload = SignPayload::Message(Checkpoint::message(&head));
        let raw = self
            .provider
            .sign(&self.handle, Algorithm::Ed25519, &payload)
            .await
            .map_err(|e| format!("audit key: {e}"))?;
        // Like every signature, the checkpoint's is verified before it is used.
        let signature = self
            .public_key
            .verify(&payload, &raw, SignatureFormat::Raw)
            .map_err(|e| format!("audit key signature does not verify: {e}"))?;
        Ok(Checkpoint {
            seq: head.seq,
            head_hash: hex::encode(head.hash),
            time: Timestamp::now(),
            signature: hex::encode(signature.raw()),
        })
    }
}

impl AuditLog {
    /// Opens the log: loads (or creates) the salt and the audit key, which lives in `provider`, reads
    /// the chain head, starts the writer, and records the start-up.
    pub async fn open(
        store: Arc<dyn Store>,
        provider: Arc<dyn KeyProvider>,
        config: AuditConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<AuditLog>, CoreError> {
        let salt = match store.get_setting(SALT_SETTING).await? {
            Some(salt) => salt,
            None => {
                let mut fresh = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(fresh.as_mut_slice());
                store
                    .put_setting_if_absent(SALT_SETTING, fresh.as_slice())
                    .await?;
                store.get_setting(SALT_SETTING).await?.unwrap_or_default()
            }
        };
        let salt: [u8; 32] = salt
            .try_into()
            .map_err(|_| CoreError::Internal("audit salt length".into()))?;
        let signer = Self::signer(store.as_ref(), provider).await?;
        let head = store.audit_head().await?;
        let (tx, rx) = mpsc::channel(4 * BATCH);
        let healthy = Arc::new(AtomicBool::new(true));
        let public_key = signer.public_key.clone();
        tokio::spawn(writer(
            Arc::clone(&store),
            rx,
            signer,
            config,
            head,
            Arc::clone(&healthy),
            metrics,
        ));
        let log = Arc::new(AuditLog {
            tx: Some(tx),
            salt: Zeroizing::new(salt),
            public_key,
            healthy,
            store,
        });
        log.append(AuditEntry::new("startup")).await?;
        Ok(log)
    }

    async fn signer(
        store: &dyn Store,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<Signer, CoreError> {
        if let Some(raw) = store.get_setting(KEY_SETTING).await? {
            let stored: StoredKey = serde_json::from_slice(&raw)
                .map_err(|e| CoreError::Internal(format!("audit key setting: {e}")))?;
            if stored.provider != provider.name().as_str() {
                return Err(CoreError::Internal(format!(
                    "the audit key lives in provider {}, which is not the default provider {}",
                    stored.provider,
                    provider.name()
                )));
            }
            let bytes = hex::decode(&stored.public_key)
                .map_err(|_| CoreError::Internal("audit public key".into()))?;
            let public_key = PublicKey::from_bytes(Algorithm::Ed25519, &bytes)?;
            return Ok(Signer {
                provider,
                handle: KeyHandle::new(stored.handle),
                public_key,
            });
        }
        let generated = provider
            .generate(Algorithm::Ed25519, "custos:audit")
            .await?;
        let stored = StoredKey {
            provider: provider.name().to_string(),
            handle: generated.handle.to_string(),
            public_key: hex::encode(generated.public_key.as_bytes()),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| CoreError::Internal(e.to_string()))?;
        if !store.put_setting_if_absent(KEY_SETTING, &bytes).await? {
            return Err(CoreError::Internal(
                "another process created the audit key at the same time; start again".into(),
            ));
        }
        Ok(Signer {
            provider,
            handle: generated.handle,
            public_key: generated.public_key,
        })
    }

    /// A log that records nothing, to measure what the real one costs (the benchmark's "audit off").
    /// No configuration reaches it: `custos serve` always opens the durable log.
    pub fn discarding(store: Arc<dyn Store>, public_key: PublicKey) -> Arc<AuditLog> {
        Arc::new(AuditLog {
            tx: None,
            salt: Zeroizing::new([0; 32]),
            public_key,
            healthy: Arc::new(AtomicBool::new(true)),
            store,
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Request>, CoreError> {
        self.tx
            .as_ref()
            .ok_or_else(|| unavailable("this audit log records nothing"))
    }

    /// Appends an entry and returns its sequence number once it is durable.
    pub async fn append(&self, entry: AuditEntry) -> Result<u64, CoreError> {
        let Some(tx) = &self.tx else {
            return Ok(0);
        };
        let (done, answer) = oneshot::channel();
        tx.send(Request::Append(Box::new(entry), done))
            .await
            .map_err(|_| unavailable("the audit writer stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the audit writer stopped"))?
            .map_err(unavailable)
    }

    /// Signs a checkpoint of the current head now (an export ends with one).
    pub async fn seal(&self) -> Result<Checkpoint, CoreError> {
        let (done, answer) = oneshot::channel();
        self.sender()?
            .send(Request::Seal(done))
            .await
            .map_err(|_| unavailable("the audit writer stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the audit writer stopped"))?
            .map_err(unavailable)
    }

    /// HMAC-SHA256 (hex) of a request payload under the audit salt.
    pub fn mac(&self, payload: &[u8]) -> String {
        payload_mac(&self.salt, payload)
    }

    /// The audit key's public key: checkpoints verify under it.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Whether the last write succeeded. While it is false, nothing is signed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records matching `query`.
    pub async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, CoreError> {
        Ok(self.store.query_audit(query).await?)
    }

    /// The whole log as JSON lines, checkpoints in place, sealed with a fresh checkpoint at the end.
    pub async fn export(&self) -> Result<String, CoreError> {
        let seal = self.seal().await?;
        let mut checkpoints = self
            .store
            .checkpoints(0, seal.seq)
            .await?
            .into_iter()
            .peekable();
        let mut out = String::new();
        let mut push = |line: &ExportLine| -> Result<(), CoreError> {
            out.push_str(
                &serde_json::to_string(line).map_err(|e| CoreError::Internal(e.to_string()))?,
            );
            out.push('\n');
            Ok(())
        };
        while let Some(cp) = checkpoints.next_if(|c| c.seq == 0) {
            push(&ExportLine::Checkpoint(cp))?;
        }
        let mut after = 0;
        while after < seal.seq {
            let page = self
                .store
                .query_audit(&AuditQuery {
                    after_seq: after,
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            if page.is_empty() {
                break;
            }
            for record in page.into_iter().take_while(|r| r.seq <= seal.seq) {
                after = record.seq;
                push(&ExportLine::Record(record))?;
                while let Some(cp) = checkpoints.next_if(|c| c.seq == after) {
                    push(&ExportLine::Checkpoint(cp))?;
                }
            }
        }
        Ok(out)
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Request>,
    signer: Signer,
    config: AuditConfig,
    mut head: Head,
    healthy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut since_checkpoint = 0u64;
    let mut last_checkpoint = Instant::now();
    let mut tick = tokio::time::interval(config.checkpoint_interval.max(Duration::from_millis(10)));
    loop {
        let first = tokio::select! {
            request = rx.recv() => match request {
                Some(request) => request,
                None => break,
            },
            _ = tick.tick() => {
                if since_checkpoint > 0 && last_checkpoint.elapsed() >= config.checkpoint_interval {
                    checkpoint(&store, &signer, head, &metrics).await.ok();
                    since_checkpoint = 0;
                    last_checkpoint = Instant::now();
                }
                continue;
            }
        };
        let mut appends = Vec::new();
        let mut seals = Vec::new();
        let mut next_request = Some(first);
        while let Some(request) = next_request.take() {
            match request {
                Request::Append(entry, done) => appends.push((entry, done)),
                Request::Seal(done) => seals.push(done),
            }
            if appends.len() < BATCH {
                next_request = rx.try_recv().ok();
            }
        }
        if !appends.is_empty() {
            let time = Timestamp::now();
            let mut next = head;
            let records: Vec<AuditRecord> = appends
                .iter()
                .map(|(entry, _)| {
                    let record = AuditRecord::seal(next, time, (**entry).clone());
                    next = record.head().unwrap_or(next);
                    record
                })
                .collect();
            let started = Instant::now();
            let written = store.append_audit(&records).await;
            metrics
                .audit_write_seconds
                .observe(started.elapsed().as_secs_f64());
            match written {
                Ok(()) => {
                    head = next;
                    healthy.store(true, Ordering::Relaxed);
                    metrics.audit_up.set(1);
                    metrics.audit_records.inc_by(records.len() as u64);
                    if let Some(sink) = &config.sink {
                        copy_to_sink(sink, &records);
                    }
                    for ((_, done), record) in appends.into_iter().zip(&records) {
                        let _ = done.send(Ok(record.seq));
                    }
                    since_checkpoint += records.len() as u64;
                }
                Err(e) => {
                    healthy.store(false, Ordering::Relaxed);
                    metrics.audit_up.set(0);
                    metrics.audit_write_failures.inc();
                    tracing::error!(error = %e, records = records.len(), "AUDIT WRITE FAILED: refusing the requests");
                    for (_, done) in appends {
                        let _ = done.send(Err(format!("cannot write the audit log: {e}")));
                    }
                }
            }
        }
        if since_checkpoint >= config.checkpoint_every {
            checkpoint(&store, &signer, head, &metrics).await.ok();
            since_checkpoint = 0;
            last_checkpoint = Instant::now();
        }
        for done in seals {
            let result = checkpoint(&store, &signer, head, &metrics).await;
            if result.is_ok() {
                since_checkpoint = 0;
                last_checkpoint = Instant::now();
            }
            let _ = done.send(result);
        }
    }
}

async fn checkpoint(
    store: &Arc<dyn Store>,
    signer: &Signer,
    head: Head,
    metrics: &Metrics,
) -> Result<Checkpoint, String> {
    let checkpoint = signer.checkpoint(head).await?;
    store
        .put_checkpoint(&checkpoint)
        .await
        .map_err(|e| format!("cannot store the checkpoint: {e}"))?;
    metrics.audit_checkpoints.inc();
    Ok(checkpoint)
}

fn copy_to_sink(sink: &AuditSink, records: &[AuditRecord]) {
    for record in records {
        let Ok(json) = serde_json::to_string(record) else {
            continue;
        };
        match sink {
            AuditSink::Stdout => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "{json}");
            }
            AuditSink::Syslog => {
                // Facility authpriv (10), severity notice (5): <85>.
                let line = format!("<85>custos-audit: {json}");
                if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
                    let _ = socket.send_to(line.as_bytes(), "/dev/log");
                }
            }
        }
    }
}
