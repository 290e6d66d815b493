//! The equivocation guard: at most one payload per sequence, never below the watermark, never too far
//! above it, and the watermark durably advanced before the signature is released.
//!
//! Guarded signing for one key is serialised (check, sign, record the new watermark in memory), but the
//! durable write is queued to the watermark writer and awaited after the key's lock is released. The
//! writer drains every queued mark into one transaction, so concurrent guarded requests share one fsync,
//! and a signature is still released only after the transaction holding its watermark has committed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use custos_store::Store;
use custos_types::{ErrorCode, KeyName, KeyRecord, SignPayload, SignatureFormat, Watermark};
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot};

use crate::{CoreError, SignOutcome, EMERGENCY_PROVIDER, MAX_SEQUENCE};

/// One key's guard: its watermark as last read or written (`None`: not loaded yet), behind the lock that
/// serialises the key's guarded signing.
type KeyGuard = Arc<tokio::sync::Mutex<Option<Option<Watermark>>>>;

/// The guard of every key.
#[derive(Debug)]
pub(crate) struct Guard {
    store: Arc<dyn Store>,
    writer: WatermarkWriter,
    keys: std::sync::Mutex<HashMap<KeyName, KeyGuard>>,
}

impl Guard {
    pub(crate) fn start(store: Arc<dyn Store>) -> Guard {
        Guard {
            writer: WatermarkWriter::start(Arc::clone(&store)),
            store,
            keys: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Signs `payload` with `sign` unless that would equivocate: a sequence below the watermark, another
    /// payload at it, or more than `max_jump` above it is refused; the same payload at the watermark gets
    /// the signature released for it back.
    pub(crate) async fn sign<F, Fut>(
        &self,
        key: &KeyRecord,
        payload: &SignPayload,
        sequence: u64,
        max_jump: u64,
        sign: F,
    ) -> Result<SignOutcome, CoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<SignOutcome, CoreError>>,
    {
        if sequence > MAX_SEQUENCE {
            return Err(CoreError::bad(
                ErrorCode::InvalidSequence,
                format!("sequence {sequence} is above the largest allowed, {MAX_SEQUENCE}"),
            ));
        }
        let lock = {
            let mut keys = self
                .keys
                .lock()
                .map_err(|_| CoreError::Internal("guard lock poisoned".into()))?;
            Arc::clone(keys.entry(key.name.clone()).or_default())
        };
        let payload_hash: [u8; 32] = sha2::Sha256::digest(payload.as_bytes()).into();
        let equivocation = |signed: u64| CoreError::Equivocation {
            key: key.name.clone(),
            sequence,
            signed,
        };
        let (outcome, durable) = {
            let mut held = lock.lock().await;
            if held.is_none() {
                *held = Some(self.store.watermark(&key.name).await?);
            }
            if let Some(Some(mark)) = held.as_ref() {
                if sequence < mark.sequence
                    || (sequence == mark.sequence && mark.payload_hash != payload_hash)
                {
                    return Err(equivocation(mark.sequence));
                }
                if sequence == mark.sequence {
                    drop(held);
                    return self.replay(key, sequence, payload_hash, payload).await;
                }
                if sequence - mark.sequence > max_jump {
                    return Err(CoreError::bad(
                        ErrorCode::SequenceTooFar,
                        format!(
                            "sequence {sequence} is {} above the last signed ({}); one request may go at \
                             most {max_jump} ahead",
                            sequence - mark.sequence,
                            mark.sequence
                        ),
                    ));
                }
            }
            let outcome = sign().await?;
            let mark = Watermark {
                sequence,
                payload_hash,
                version: outcome.version,
                provider: outcome.provider.clone(),
                signature: outcome.signature.raw().to_vec(),
            };
            let durable = self.writer.advance(key.name.clone(), mark.clone()).await?;
            *held = Some(Some(mark));
            (outcome, durable)
        };
        let written = durable
            .await
            .unwrap_or_else(|_| Err("the watermark writer stopped".into()));
        match written {
            Ok(true) => Ok(outcome),
            failed => {
                // What is in memory may be ahead of the store: read it again next time.
                *lock.lock().await = None;
                match failed {
                    Ok(_) => Err(equivocation(sequence)),
                    Err(e) => Err(CoreError::Unavailable(format!(
                        "cannot record the signed sequence: {e}"
                    ))),
                }
            }
        }
    }

    /// The same payload at the signed sequence: once the watermark is durable, the stored signature,
    /// checked again before it is returned.
    async fn replay(
        &self,
        key: &KeyRecord,
        sequence: u64,
        payload_hash: [u8; 32],
        payload: &SignPayload,
    ) -> Result<SignOutcome, CoreError> {
        self.writer.flush().await?;
        let mark =
            self.store.watermark(&key.name).await?.ok_or_else(|| {
                CoreError::Unavailable("the signed sequence was not recorded".into())
            })?;
        if mark.sequence != sequence || mark.payload_hash != payload_hash {
            return Err(CoreError::Equivocation {
                key: key.name.clone(),
                sequence,
                signed: mark.sequence,
            });
        }
        if mark.provider.as_str() == EMERGENCY_PROVIDER {
            return crate::emergency::verify_replay(
                self.store.as_ref(),
                &key.name,
                key.algorithm,
                mark.version,
                payload,
                &mark.signature,
            )
            .await;
        }
        let version = key
            .version(mark.version)
            .ok_or_else(|| CoreError::Internal("watermark names a missing version".into()))?;
        let signature =
            version
                .public_key
                .verify(payload, &mark.signature, SignatureFormat::Raw)?;
        Ok(SignOutcome {
            version: mark.version,
            provider: mark.provider,
            signature,
            emergency: None,
        })
    }
}

/// The most marks one transaction carries.
const BATCH: usize = 512;

enum Job {
    Advance(KeyName, Watermark, oneshot::Sender<Result<bool, String>>),
    Flush(oneshot::Sender<()>),
}

/// The handle to the watermark writer task.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkWriter {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

fn stopped() -> CoreError {
    CoreError::Unavailable("the watermark writer has stopped".into())
}

impl WatermarkWriter {
    /// Starts the writer task.
    pub(crate) fn start(store: Arc<dyn Store>) -> WatermarkWriter {
        let (tx, rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(write(store, rx));
        WatermarkWriter { tx }
    }

    /// Queues a compare-and-set raise of `key`'s watermark; the receiver answers, once the transaction
    /// has committed, whether the mark was above the stored one and was written.
    pub(crate) async fn advance(
        &self,
        key: KeyName,
        mark: Watermark,
    ) -> Result<oneshot::Receiver<Result<bool, String>>, CoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Advance(key, mark, done))
            .await
            .map_err(|_| stopped())?;
        Ok(rx)
    }

    /// Waits until every mark queued before this call is durable (or failed).
    pub(crate) async fn flush(&self) -> Result<(), CoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Flush(done))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

async fn write(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut marks = Vec::new();
        let mut replies = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Advance(key, mark, done) => {
                    marks.push((key, mark));
                    replies.push(done);
                }
                Job::Flush(done) => flushes.push(done),
            }
            if marks.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !marks.is_empty() {
            match store.advance_watermarks(&marks).await {
                Ok(advanced) => {
                    for (done, ok) in replies.into_iter().zip(advanced) {
                        let _ = done.send(Ok(ok));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, marks = marks.len(), "cannot write watermarks");
                    for done in replies {
                        let _ = done.send(Err(e.to_string()));
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
