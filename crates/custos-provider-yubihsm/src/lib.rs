//! The YubiHSM2 key provider, over the `yubihsm-connector` HTTP API.
//!
//! Keys are generated inside the device without the `exportable-under-wrap` capability, so their private
//! halves never leave it. A key's handle is its object id (decimal). The client is blocking, so every call
//! runs on tokio's blocking pool; the device executes one command at a time, so calls are serialised by
//! the client's session.

use std::sync::Arc;

use async_trait::async_trait;
use custos_provider::{
    signing_input, Capabilities, GeneratedKey, KeyProvider, ProviderError, ProviderHealth,
};
use custos_types::{ecdsa_der_to_raw, Algorithm, KeyHandle, ProviderName, PublicKey, SignPayload};
use secrecy::{ExposeSecret as _, SecretString};
use yubihsm::{asymmetric, object, Capability, Client, Connector, Credentials, Domain};

/// How to reach the device and authenticate.
#[derive(Debug, Clone)]
pub struct YubiHsmConfig {
    /// The authentication key's object id.
    pub auth_key_id: u16,
    /// The authentication key's password.
    pub password: SecretString,
    /// The domains new keys belong to (1-16; default 1).
    pub domain: u8,
}

/// The YubiHSM2 provider.
pub struct YubiHsmProvider {
    name: ProviderName,
    client: Arc<Client>,
    domain: Domain,
}

impl std::fmt::Debug for YubiHsmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YubiHsmProvider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn map_error(err: yubihsm::client::Error) -> ProviderError {
    use yubihsm::client::ErrorKind;
    if let Some(device) = err.device_error() {
        return match device {
            yubihsm::device::ErrorKind::ObjectNotFound => {
                ProviderError::UnknownKey(KeyHandle::new("object not found"))
            }
            other => ProviderError::Refused(format!("YubiHSM refused the command: {other}")),
        };
    }
    match err.kind() {
        // A protocol error is the transport breaking (I/O); the device or connector may come back.
        ErrorKind::ConnectorError
        | ErrorKind::ClosedSessionError
        | ErrorKind::CreateFailed
        | ErrorKind::ProtocolError => {
            ProviderError::Unavailable(format!("YubiHSM unreachable: {err}"))
        }
        ErrorKind::AuthenticationError => ProviderError::Refused(
            "YubiHSM authentication failed: check the auth key id and password".into(),
        ),
        _ => ProviderError::Refused(format!("YubiHSM error: {err}")),
    }
}

fn yubi_algorithm(algorithm: Algorithm) -> asymmetric::Algorithm {
    match algorithm {
        Algorithm::Ed25519 => asymmetric::Algorithm::Ed25519,
        Algorithm::Secp256k1 => asymmetric::Algorithm::EcK256,
        Algorithm::P256 => asymmetric::Algorithm::EcP256,
    }
}

fn key_id(handle: &KeyHandle) -> Result<object::Id, ProviderError> {
    handle
        .as_str()
        .parse()
        .map_err(|_| ProviderError::UnknownKey(handle.clone()))
}

/// The device's public key bytes in Custos's canonical form (ECDSA: `04 ‖ X ‖ Y`).
fn public_key(key: &yubihsm::asymmetric::PublicKey) -> Result<PublicKey, ProviderError> {
    let (algorithm, bytes) = match key.algorithm {
        asymmetric::Algorithm::Ed25519 => (Algorithm::Ed25519, key.as_ref().to_vec()),
        asymmetric::Algorithm::EcK256 => (Algorithm::Secp256k1, [&[0x04], key.as_ref()].concat()),
        asymmetric::Algorithm::EcP256 => (Algorithm::P256, [&[0x04], key.as_ref()].concat()),
        other => {
            return Err(ProviderError::Corrupt(format!(
                "unsupported YubiHSM key algorithm {other:?}"
            )))
        }
    };
    PublicKey::from_bytes(algorithm, &bytes).map_err(|e| ProviderError::Corrupt(e.to_string()))
}

impl YubiHsmProvider {
    /// Creates the provider over `connector` (the HTTP connector in production; the crate's mock HSM in
    /// tests) and tries to authenticate. An unreachable connector is not an error here (the provider
    /// reports unavailable until it answers); wrong credentials are.
    pub fn new(
        name: ProviderName,
        connector: Connector,
        config: YubiHsmConfig,
    ) -> Result<YubiHsmProvider, ProviderError> {
        let credentials = Credentials::from_password(
            config.auth_key_id,
            config.password.expose_secret().as_bytes(),
        );
        let client = Client::create(connector, credentials).map_err(map_error)?;
        let domain = Domain::at(usize::from(config.domain)).map_err(|_| {
            ProviderError::Refused(format!("YubiHSM domain {} is not 1-16", config.domain))
        })?;
        let provider = YubiHsmProvider {
            name,
            client: Arc::new(client),
            domain,
        };
        match provider.client.connect().map_err(map_error) {
            Ok(()) | Err(ProviderError::Unavailable(_)) => Ok(provider),
            Err(other) => Err(other),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> Result<T, ProviderError> + Send + 'static,
    {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || f(&client))
            .await
            .map_err(|e| ProviderError::Unavailable(format!("YubiHSM task failed: {e}")))?
    }
}

#[async_trait]
impl KeyProvider for YubiHsmProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "yubihsm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            algorithms: Algorithm::ALL.to_vec(),
            exportable: false,
            import: false,
            bip32: false,
        }
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        // Labels hold at most 40 bytes; keep the start, on a character boundary.
        let mut end = label.len().min(40);
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        let label: object::Label = label[..end]
            .parse()
            .map_err(|_| ProviderError::InvalidPayload("label is not valid for YubiHSM"))?;
        let domain = self.domain;
        let capability = if algorithm.is_ecdsa() {
            Capability::SIGN_ECDSA
        } else {
            Capability::SIGN_EDDSA
        };
        self.blocking(move |client| {
            // Pick a free object id at random; the id space is small, so retry a few collisions.
            for _ in 0..16 {
                let mut bytes = [0u8; 2];
                getrandom_id(&mut bytes);
                let id = u16::from_be_bytes(bytes).clamp(1, 0xfffe);
                match client.generate_asymmetric_key(
                    id,
                    label.clone(),
                    domain,
                    capability,
                    yubi_algorithm(algorithm),
                ) {
                    Ok(id) => {
                        let key = client.get_public_key(id).map_err(map_error)?;
                        return Ok(GeneratedKey {
                            handle: KeyHandle::new(id.to_string()),
                            public_key: public_key(&key)?,
                        });
                    }
                    Err(e)
                        if e.device_error() == Some(yubihsm::device::ErrorKind::ObjectExists) =>
                    {
                        continue
                    }
                    Err(e) => return Err(map_error(e)),
                }
            }
            Err(ProviderError::Refused(
                "no free YubiHSM object id found".into(),
            ))
        })
        .await
    }

    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        let id = key_id(handle)?;
        let handle = handle.clone();
        self.blocking(move |client| {
            let key = client.get_public_key(id).map_err(|e| match map_error(e) {
                ProviderError::UnknownKey(_) => ProviderError::UnknownKey(handle.clone()),
                other => other,
            })?;
            public_key(&key)
        })
        .await
    }

    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        let id = key_id(handle)?;
        let (handle, payload) = (handle.clone(), payload.clone());
        self.blocking(move |client| {
            let unknown = |e| match map_error(e) {
                ProviderError::UnknownKey(_) => ProviderError::UnknownKey(handle.clone()),
                other => other,
            };
            let key = client.get_public_key(id).map_err(unknown)?;
            if public_key(&key)?.algorithm() != algorithm {
                return Err(ProviderError::UnsupportedAlgorithm(algorithm));
            }
            let data = signing_input(algorithm, &payload)?.to_vec();
            if algorithm.is_ecdsa() {
                let der = client.sign_ecdsa_prehash_raw(id, data).map_err(unknown)?;
                let raw = ecdsa_der_to_raw(algorithm, &der)
                    .map_err(|e| ProviderError::Corrupt(format!("YubiHSM signature: {e}")))?;
                Ok(raw.to_vec())
            } else {
                Ok(client
                    .sign_ed25519(id, data)
                    .map_err(unknown)?
                    .to_bytes()
                    .to_vec())
            }
        })
        .await
    }

    async fn health(&self) -> ProviderHealth {
        self.blocking(|client| client.ping().map(|_| ()).map_err(map_error))
            .await
            .into()
    }
}

/// Random bytes for object ids from the OS.
fn getrandom_id(bytes: &mut [u8; 2]) {
    use rand_core::RngCore as _;
    rand_core::OsRng.fill_bytes(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_provider::conformance;

    fn config(password: &str) -> YubiHsmConfig {
        // The mock HSM's default authentication key: id 1, password "password".
        YubiHsmConfig {
            auth_key_id: 1,
            password: SecretString::from(password.to_owned()),
            domain: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_on_the_crates_mock_hsm() {
        // MOCK: yubihsm's in-memory MockHsm stands in for a YubiHSM2 device, which cannot run here.
        let hsm = YubiHsmProvider::new(
            ProviderName::new("yubi").unwrap(),
            Connector::mockhsm(),
            config("password"),
        )
        .unwrap();
        // A connector on a port where nothing listens: a real unreachable yubihsm-connector.
        let http = yubihsm::HttpConfig {
            addr: "127.0.0.1".into(),
            port: 1,
            timeout_ms: 500,
        };
        let down = YubiHsmProvider::new(
            ProviderName::new("yubi-down").unwrap(),
            Connector::http(&http),
            config("password"),
        )
        .unwrap();
        conformance::run(conformance::Harness::new(Arc::new(hsm), Arc::new(down))).await;
    }

    #[test]
    fn wrong_password_is_refused() {
        let err = YubiHsmProvider::new(
            ProviderName::new("yubi").unwrap(),
            Connector::mockhsm(),
            config("wrong"),
        )
        .unwrap_err();
        assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
        assert!(
            !err.to_string().contains("wrong"),
            "the password leaked: {err}"
        );
    }
}
