//! The HTTP client behind the CLI's client verbs: it talks to `CUSTOS_ADDR` with `CUSTOS_TOKEN`.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use custos_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A connection to one Custos server.
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

/// The error a server answered with; the CLI prints it and exits non-zero.
#[derive(Debug)]
pub struct ServerError {
    pub status: StatusCode,
    pub body: Option<ErrorBody>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            Some(b) => write!(
                f,
                "{} ({}, HTTP {})",
                b.error.message,
                b.error.code,
                self.status.as_u16()
            )?,
            None => write!(f, "the server answered HTTP {}", self.status)?,
        }
        if self.status == StatusCode::UNAUTHORIZED {
            write!(
                f,
                "\nhint: set CUSTOS_TOKEN to a valid token (custos dev and custos init print one)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

impl Client {
    pub fn new(
        addr: String,
        token: Option<String>,
        ca_cert: Option<PathBuf>,
    ) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(path) = ca_cert {
            let pem =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Client {
            http: builder.build()?,
            addr: addr.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A GET whose answer is text (the audit export).
    pub async fn text(&self, method: Method, path: &str) -> anyhow::Result<String> {
        let response = self.send(method, path, None::<&()>).await?;
        String::from_utf8(response).context("the server's answer is not UTF-8")
    }

    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).context("the server's answer is not what this CLI expects")
    }

    /// A GET with query parameters (encoded by reqwest).
    pub async fn get_query<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> anyhow::Result<R> {
        let bytes = self
            .send_with(Method::GET, path, None::<&()>, Some(query))
            .await?;
        serde_json::from_slice(&bytes).context("the server's answer is not what this CLI expects")
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<Vec<u8>> {
        self.send_with(method, path, body, None::<&()>).await
    }

    async fn send_with<B: Serialize, Q: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        query: Option<&Q>,
    ) -> anyhow::Result<Vec<u8>> {
        let Some(token) = &self.token else {
            bail!(
                "no token: set CUSTOS_TOKEN (custos dev and custos init print one) or pass --token"
            );
        };
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(token);
        if let Some(query) = query {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach Custos at {}: {e}\nhint: is the server running (custos dev)? Is CUSTOS_ADDR right?",
                self.addr
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Err(ServerError {
                status,
                body: serde_json::from_slice(&bytes).ok(),
            }
            .into());
        }
        Ok(bytes.to_vec())
    }
}
