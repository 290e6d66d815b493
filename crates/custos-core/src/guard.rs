//! The equivocation guard's durable side: watermark writes grouped into shared transactions.
//!
//! Guarded signing for one key is serialised (check, sign, record the new watermark in memory), but the
//! durable write is queued here and awaited after the key's lock is released. The writer drains every
//! queued mark into one transaction, so concurrent guarded requests share one fsync, and a signature is
//! still released only after the transaction holding its watermark has committed.

use std::sync::Arc;

use custos_store::{Store, Watermark};
use custos_types::KeyName;
use tokio::sync::{mpsc, oneshot};

use crate::CoreError;

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
