//! Events for operators' systems: provider switches, emergency mode, rotations. Core hands each event to
//! the installed [`EventSink`]s and knows nothing of how they deliver it (the binary installs a webhook
//! sink); the audit log, not a sink, is the record of what happened.

use std::fmt::Debug;
use std::sync::Arc;

use serde::Serialize;

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

/// Where events go. A sink must not block: it queues and delivers in the background.
pub trait EventSink: Send + Sync + Debug {
    /// Takes one event, stamped with the time it happened.
    fn deliver(&self, event: &Event, at: custos_types::Timestamp);
}

/// The installed sinks. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Events {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl Events {
    /// No sink: events are only logged.
    pub fn none() -> Events {
        Events::default()
    }

    /// Events go to `sink` too.
    pub fn with(mut self, sink: Arc<dyn EventSink>) -> Events {
        self.sinks.push(sink);
        self
    }

    /// Logs an event and hands it to every sink; never waits.
    pub fn emit(&self, event: Event) {
        tracing::info!(event = event.kind(), details = ?event, "event");
        let at = custos_types::Timestamp::now();
        for sink in &self.sinks {
            sink.deliver(&event, at);
        }
    }
}
