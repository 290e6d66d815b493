//! Webhooks: the event sink the server installs. Each event is POSTed as JSON to every webhook that
//! subscribed to its type, off the request path: a bounded queue feeds one delivery task, which retries a
//! failed delivery a few times and then drops it with an error log (the audit log, not the webhook, is
//! the record of what happened). With a secret, the body's HMAC-SHA256 is sent as
//! `X-Custos-Signature: sha256=<hex>` so receivers can check the sender.

use std::time::Duration;

use custos_core::{Event, EventSink};
use custos_types::Timestamp;
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::mpsc;

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

/// The sink: a queue to the delivery task.
#[derive(Debug)]
pub struct WebhookSink {
    tx: mpsc::Sender<(Event, Timestamp)>,
}

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 3;

impl WebhookSink {
    /// Starts the delivery task for `webhooks`.
    pub fn start(webhooks: Vec<Webhook>) -> WebhookSink {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(webhooks, rx));
        WebhookSink { tx }
    }
}

impl EventSink for WebhookSink {
    fn deliver(&self, event: &Event, at: Timestamp) {
        if self.tx.try_send((event.clone(), at)).is_err() {
            tracing::error!("webhook queue full or closed: an event was not delivered");
        }
    }
}

/// The header value for a body signed with `secret`.
#[expect(clippy::expect_used, reason = "HMAC-SHA256 takes keys of any length")]
pub fn signature_header(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(webhooks: Vec<Webhook>, mut rx: mpsc::Receiver<(Event, Timestamp)>) {
    custos_http::install_crypto_provider();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook receiver on 127.0.0.1: every POST's signature header and body go to the channel.
    async fn receiver() -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    ) {
        use axum::routing::post;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let tx = tx.clone();
                    async move {
                        let signature = headers
                            .get("x-custos-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let _ = tx.send((signature, body.to_vec()));
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    #[tokio::test]
    async fn subscribed_events_reach_a_real_receiver_signed() {
        let (url, mut hooks) = receiver().await;
        let secret = SecretString::from("hook secret".to_owned());
        let sink = WebhookSink::start(vec![Webhook {
            url,
            events: vec!["key_rotated".into()],
            secret: Some(secret.clone()),
        }]);
        sink.deliver(
            &Event::RotationFailed {
                key: "k".into(),
                error: "x".into(),
            },
            Timestamp::now(),
        );
        sink.deliver(
            &Event::KeyRotated {
                key: "old".into(),
                version: 2,
                backup: "none".into(),
            },
            Timestamp::now(),
        );
        let (signature, body) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
            .await
            .expect("a webhook call")
            .unwrap();
        assert_eq!(signature, signature_header(&secret, &body));
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            event["event"], "key_rotated",
            "the unsubscribed event was not sent"
        );
        assert_eq!(event["key"], "old");
        assert_eq!(event["version"], 2);
        assert!(event["at"].is_string());
    }
}
