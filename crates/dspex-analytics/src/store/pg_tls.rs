//! Connecting to PostgreSQL over rustls, with libpq's `sslmode` semantics
//! read from the URL.
//!
//! | `sslmode` | TLS | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it, else plain | no |
//! | `require` | always | no (but as `verify-ca` when `sslrootcert` is given, as libpq) |
//! | `verify-ca` | always | chain, against `sslrootcert` or the platform roots |
//! | `verify-full` | always | chain and host name |
//!
//! `sslrootcert=<file>` names a PEM file of trusted CA certificates;
//! `sslrootcert=system` means the platform's roots and implies `verify-full`
//! (as libpq 16). The crypto provider is aws-lc-rs, as in the HTTP clients.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{AnalyticsError, Result};

/// How a connection uses TLS: libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate;
    /// plain otherwise (libpq's default).
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate chain checked against the trusted roots.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// The URL value (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` (plain first, TLS if refused) has no use here.
            other => {
                return Err(config_error(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn config_error(message: String) -> AnalyticsError {
    AnalyticsError::Config(dspex_core::CoreError::config("analytics.store", message))
}

/// Where trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// A PEM file (`sslrootcert=<file>`).
    File(PathBuf),
    /// The platform's roots.
    Platform,
}

/// A parsed connection URL: tokio-postgres's config, and the TLS to use.
pub(crate) struct Target {
    config: Config,
    mode: SslMode,
    // None for `disable`.
    tls: Option<MakeRustlsConnect>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Config Debug redacts the password.
        f.debug_struct("Target")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

impl Target {
    /// Parses `url` (`postgres://...?sslmode=...&sslrootcert=...`), reads the
    /// root certificates it names and builds the TLS configuration.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut root = None;
        let mut kept = Vec::new();
        for segment in query.split('&').filter(|s| !s.is_empty()) {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            match decode(key).as_str() {
                "sslmode" => mode = Some(SslMode::parse(&decode(value))?),
                "sslrootcert" => root = Some(decode(value)),
                // Everything else is tokio-postgres's to read, as written.
                _ => kept.push(segment),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = Config::from_str(&rebuilt).map_err(|e| {
            // tokio-postgres's parse errors name the option, never the password.
            config_error(format!("invalid PostgreSQL URL: {e}"))
        })?;
        let (mode, roots) = match (mode, root.as_deref()) {
            (None | Some(SslMode::VerifyFull), Some("system")) => {
                (SslMode::VerifyFull, Some(Roots::Platform))
            }
            (Some(other), Some("system")) => {
                return Err(config_error(format!(
                    "sslrootcert=system needs sslmode=verify-full (or none), not `{other}`"
                )));
            }
            (mode, Some(file)) if !file.is_empty() => {
                // As libpq: a root certificate given makes `require` check the chain.
                let mode = match mode.unwrap_or(SslMode::Prefer) {
                    SslMode::Require => SslMode::VerifyCa,
                    other => other,
                };
                (mode, Some(Roots::File(PathBuf::from(file))))
            }
            (mode, _) => (mode.unwrap_or(SslMode::Prefer), None),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match mode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(client_config(Verify::Nothing)?),
            SslMode::VerifyCa => Some(client_config(Verify::Chain(load_roots(roots)?))?),
            SslMode::VerifyFull => Some(client_config(Verify::Full(load_roots(roots)?))?),
        };
        Ok(Self {
            config,
            mode,
            tls: tls.map(MakeRustlsConnect::new),
        })
    }

    /// The TLS mode.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens a connection, its I/O driven by a spawned task.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let Some(tls) = &self.tls else {
            return spawn(self.config.connect(NoTls).await, self.mode);
        };
        let result = self.config.connect(tls.clone()).await;
        if self.mode == SslMode::Prefer
            && let Err(error) = &result
            && tls_failure(error).is_some()
        {
            // As libpq: `prefer` falls back to a plain connection when the TLS
            // handshake fails.
            tracing::debug!(%error, "PostgreSQL TLS handshake failed; connecting without TLS (sslmode=prefer)");
            let mut plain = self.config.clone();
            plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
            return spawn(plain.connect(NoTls).await, self.mode);
        }
        spawn(result, self.mode)
    }
}

fn spawn<T>(
    result: std::result::Result<(Client, Connection<Socket, T>), tokio_postgres::Error>,
    mode: SslMode,
) -> Result<Client>
where
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    let (client, connection) = result.map_err(|e| connect_error(&e, mode))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "analytics PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// The rustls error under a tokio-postgres error, if the TLS layer failed.
fn tls_failure(error: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // io::Error's `source` skips the error it wraps: look inside.
        if let Some(inner) = current
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(describe(inner));
        }
        source = current.source();
    }
    let text = error.to_string();
    text.contains("TLS").then_some(text)
}

/// A rustls error, with what to do about the common certificate failures.
fn describe(error: &rustls::Error) -> String {
    let hint = match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "; the host name in the URL does not match the server's certificate \
             (connect by a name the certificate lists, or use sslmode=verify-ca to check the chain only)"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "; the server's certificate is not signed by a trusted root \
             (name its CA with sslrootcert=<file>)"
        }
        _ => "",
    };
    format!("{error}{hint}")
}

fn connect_error(error: &tokio_postgres::Error, mode: SslMode) -> AnalyticsError {
    match tls_failure(error) {
        // A certificate or TLS-support problem does not heal by retrying.
        Some(detail) => AnalyticsError::Store {
            backend: "postgres",
            message: format!("TLS connection failed (sslmode={mode}): {detail}"),
            retryable: false,
        },
        None => AnalyticsError::postgres(error),
    }
}

/// What the client checks of the server's certificate.
enum Verify {
    Nothing,
    Chain(RootCertStore),
    Full(RootCertStore),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(verify: Verify) -> Result<ClientConfig> {
    let provider = provider();
    let tls_error = |e: &dyn fmt::Display| config_error(format!("cannot set up TLS: {e}"));
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Lenient {
            provider,
            chain: None,
        }),
        Verify::Chain(roots) => Arc::new(Lenient {
            chain: Some(webpki(roots, Arc::clone(&provider))?),
            provider,
        }),
        Verify::Full(roots) => webpki(roots, provider)?,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| config_error(format!("cannot set up TLS: {e}")))
}

fn load_roots(roots: Option<Roots>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots.unwrap_or(Roots::Platform) {
        Roots::File(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| config_error(format!("cannot read sslrootcert `{shown}`: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| config_error(format!("sslrootcert `{shown}`: {e}")))?;
                store.add(cert).map_err(|e| {
                    config_error(format!(
                        "sslrootcert `{shown}` has an unusable certificate: {e}"
                    ))
                })?;
            }
            if store.is_empty() {
                return Err(config_error(format!(
                    "sslrootcert `{shown}` holds no PEM certificate"
                )));
            }
        }
        Roots::Platform => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(config_error(
                    "no platform root certificates found for sslmode=verify-ca/verify-full; \
                     name a CA file with sslrootcert=<file>"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require` (no `chain`): encrypted, but any certificate is
/// accepted, as libpq does without a root. `verify-ca` (a `chain`): the chain
/// must lead to a trusted root; the host name is not compared. Either way the
/// handshake signatures are checked.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the name after the chain: this error means the
            // chain was good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_sslmode_and_leaves_other_options() {
        let t = Target::parse(
            "postgres://u:secret@db.example:5432/app?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(t.mode(), SslMode::Require);
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert!(!format!("{t:?}").contains("secret"));
        let t = Target::parse("postgres://u@h/app").unwrap();
        assert_eq!(t.mode(), SslMode::Prefer);
        let t = Target::parse("postgres://u@h/app?sslmode=disable").unwrap();
        assert_eq!(t.mode(), SslMode::Disable);
        assert!(t.tls.is_none());
    }

    #[test]
    fn a_bad_sslmode_or_root_file_is_a_config_error() {
        let e = Target::parse("postgres://u:pw@h/app?sslmode=verify_full")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("analytics.store") && e.contains("verify_full"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
        let e =
            Target::parse("postgres://u@h/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .unwrap_err()
                .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = Target::parse("postgres://u@h/app?sslmode=require&sslrootcert=system")
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
    }
}
