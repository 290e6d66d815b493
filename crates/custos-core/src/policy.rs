//! The policy step of the sign path: after the caller is authorised and before any provider is asked,
//! every installed [`SignPolicy`] decides: allow, deny with a reason, or hold for approvals.
//!
//! Policies are plug-ins: emergency mode's restrictions are one (they decide only when the emergency key
//! is about to sign); approval quorums, transaction rules and risk callbacks are others. Core asks them
//! in order; the first that does not allow decides.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use custos_types::{KeyRecord, KeyVersion, SignPayload};

use crate::{CoreError, RequestContext};

/// When in the sign path a policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyStage {
    /// Before the key's providers are asked.
    Normal,
    /// Every provider of the chain failed and an emergency key is about to sign instead.
    Emergency,
}

/// What a policy sees of a sign request.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// Who asks, from where.
    pub ctx: &'a RequestContext,
    /// The key.
    pub key: &'a KeyRecord,
    /// The version that would sign.
    pub version: KeyVersion,
    /// The operation (`sign`, `sign_batch`, `sign_derived`).
    pub operation: &'static str,
    /// The exact bytes that would be signed.
    pub payload: &'a SignPayload,
    /// The message as the caller gave it, when it is not a bare digest (a transaction a policy may parse).
    pub message: Option<&'a [u8]>,
    /// The equivocation guard's sequence, if any.
    pub sequence: Option<u64>,
    /// When the policy is asked.
    pub stage: PolicyStage,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may go on.
    Allow,
    /// The request is refused, and why (said to the caller and audited).
    Deny(String),
    /// The request may go on once these requirements are met (for example "2 of treasury").
    Pending(Vec<String>),
}

/// A signing policy.
#[async_trait]
pub trait SignPolicy: Send + Sync + Debug {
    /// The policy's name, in refusals and audit records.
    fn name(&self) -> &str;

    /// Decides on one request. An error (a policy that cannot reach what it needs) refuses the request.
    async fn decide(&self, input: &PolicyInput<'_>) -> Result<Decision, CoreError>;
}

/// The installed policies, asked in order.
#[derive(Debug, Clone, Default)]
pub struct Policies(Vec<Arc<dyn SignPolicy>>);

impl Policies {
    /// No policy: everything an authorised caller asks is allowed.
    pub fn none() -> Policies {
        Policies(Vec::new())
    }

    /// Adds a policy after the others.
    pub fn with(mut self, policy: Arc<dyn SignPolicy>) -> Policies {
        self.0.push(policy);
        self
    }

    /// The installed policies, in order.
    pub fn iter(&self) -> impl Iterator<Item = Arc<dyn SignPolicy>> + '_ {
        self.0.iter().cloned()
    }

    /// The names of the installed policies.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Asks every policy; the first that does not allow decides.
    pub async fn check(&self, input: &PolicyInput<'_>) -> Result<(), CoreError> {
        for policy in &self.0 {
            match policy.decide(input).await? {
                Decision::Allow => {}
                Decision::Deny(reason) => {
                    return Err(CoreError::PolicyDenied {
                        policy: policy.name().to_owned(),
                        reason,
                    })
                }
                Decision::Pending(requirements) => {
                    return Err(CoreError::ApprovalRequired {
                        policy: policy.name().to_owned(),
                        requirements,
                    })
                }
            }
        }
        Ok(())
    }
}
