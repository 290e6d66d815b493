//! Events for operators' systems: provider switches, emergency mode, rotations, delivered as webhooks.
//!
//! Each event is POSTed as JSON to every webhook that subscribed to its type, off the request path: a
//! bounded queue feeds one delivery task, which retries a failed delivery a few times and then drops it
//! with an error log (the audit log, not the webhook, is the record of what happened). With a secret, the
//! body's HMAC-SHA256 is sent as `X-Custos-Signature: sha256=<hex>` so receivers can check the sender.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use tokio::sync::mpsc;

/// Something operators want to hear about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Signing for a key moved to another provider of its chain (`failover` down the chain, `failback`
    /// up it).
    ProviderSwitch {
        /// The key.
        key: String,
        /// The provider used before.
        from: String,
        /// The provider used now.
        to: String,
        /// `failover` or `failback`.
        direction: String,
    },
    /// Every provider of a chain failed and an emergency key signed.
    EmergencySignature {
        /// The key.
        key: String,
        /// The emergency public key (base64 of the raw key): a different identity from the key's own.
        emergency_public_key: String,
        /// Emergency signatures made with this key so far.
        count: u64,
    },
    /// A key was rotated.
    KeyRotated {
        /// The key.
        key: String,
        /// The new current version.
        version: u32,
        /// Where the backup was written, or why there is none.
        backup: String,
    },
    /// A scheduled rotation failed; it is retried at the next check.
    RotationFailed {
        /// The key.
        key: String,
        /// Why.
        error: String,
    },
}

impl Event {
    /// The event's type name, as webhooks subscribe to it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ProviderSwitch { .. } => "provider_switch",
            Event::EmergencySignature { .. } => "emergency_signature",
            Event::KeyRotated { .. } => "key_rotated",
            Event::RotationFailed { .. } => "rotation_failed",
        }
    }
}

/// One webhook subscription.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    /// Event types to send (empty: all).
    pub events: Vec<String>,
    /// The HMAC key for `X-Custos-Signature`.
    pub secret: Option<SecretString>,
}

/// The event queue. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Events {
    tx: Option<mpsc::Sender<(Event, jiff::Timestamp)>>,
}

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 3;

impl Events {
    /// No webhooks: events are only logged.
    pub fn none() -> Events {
        Events { tx: None }
    }

    /// Delivers events to `webhooks` from a background task.
    pub fn webhooks(webhooks: Vec<Webhook>) -> Events {
        if webhooks.is_empty() {
            return Events::none();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(webhooks, rx));
        Events { tx: Some(tx) }
    }

    /// Queues an event; never waits. A full queue drops the event with an error log.
    pub fn emit(&self, event: Event) {
        tracing::info!(event = event.kind(), details = ?event, "event");
        if let Some(tx) = &self.tx {
            if tx.try_send((event, jiff::Timestamp::now())).is_err() {
                tracing::error!("webhook queue full or closed: an event was not delivered");
            }
        }
    }
}

/// The header value for a body signed with `secret`.
pub fn signature_header(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(webhooks: Vec<Webhook>, mut rx: mpsc::Receiver<(Event, jiff::Timestamp)>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; events are only logged");
            return;
        }
    };
    while let Some((event, at)) = rx.recv().await {
        let mut body = serde_json::to_value(&event).unwrap_or_default();
        if let Some(object) = body.as_object_mut() {
            object.insert("at".into(), serde_json::Value::String(at.to_string()));
        }
        let body = body.to_string().into_bytes();
        for hook in webhooks
            .iter()
            .filter(|h| h.events.is_empty() || h.events.iter().any(|e| e == event.kind()))
        {
            for attempt in 1..=ATTEMPTS {
                let mut request = client
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(secret) = &hook.secret {
                    request = request.header("x-custos-signature", signature_header(secret, &body));
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => break,
                    outcome => {
                        let why = match outcome {
                            Ok(response) => format!("status {}", response.status()),
                            Err(e) => e.to_string(),
                        };
                        if attempt == ATTEMPTS {
                            tracing::error!(url = %hook.url, event = event.kind(), error = %why,
                                "webhook delivery failed; dropping the event");
                        } else {
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                        }
                    }
                }
            }
        }
    }
}
