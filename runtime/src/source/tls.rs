//! TLS for weir's own PostgreSQL sessions (queries, snapshot reads), with libpq's meaning of
//! `sslmode` and `sslrootcert`. The replication stream (pg_walstream) reads both itself.
//!
//! - `disable`: plain TCP.
//! - `prefer` (the default) and `require`: encrypted when the server offers it (`require`: or
//!   fail), the server's certificate not checked, as libpq does, unless `sslrootcert` is given.
//! - `verify-ca` and `verify-full`: the certificate must chain to `sslrootcert` (a PEM file, or
//!   `system` for the Mozilla roots) and name the host.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Result, SourceError};

/// `connection` as tokio-postgres reads it (the parameters it does not know taken out), and the
/// TLS connector its `sslmode` and `sslrootcert` call for.
pub(super) fn connector(connection: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let bad = |message: String| SourceError::Precondition(format!("source.connection: {message}"));
    if !connection.starts_with("postgres://") && !connection.starts_with("postgresql://") {
        // `key=value` settings: tokio-postgres reads `sslmode` (disable, prefer, require) itself.
        let config = connection.parse().map_err(|e| bad(format!("{e}")))?;
        let tls = unverified().map_err(|e| bad(format!("TLS: {e}")))?;
        return Ok((config, MakeRustlsConnect::new(tls)));
    }
    let mut url =
        url::Url::parse(connection).map_err(|e| bad(format!("not a postgres:// URL ({e})")))?;
    let mut mode = "prefer".to_owned();
    let mut root_cert: Option<String> = None;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(k, v)| match k.as_ref() {
            "sslmode" => {
                mode = v.into_owned();
                None
            }
            "sslrootcert" => {
                root_cert = Some(v.into_owned());
                None
            }
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(&kept);
    let verify = match mode.as_str() {
        "disable" | "prefer" | "require" => root_cert.is_some(),
        "verify-ca" | "verify-full" => true,
        other => {
            return Err(bad(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    let mut config: tokio_postgres::Config = url
        .as_str()
        .trim_end_matches('?')
        .parse()
        .map_err(|e| bad(format!("{e}")))?;
    config.ssl_mode(match mode.as_str() {
        "disable" => tokio_postgres::config::SslMode::Disable,
        "prefer" => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?;
    let tls = if verify {
        let mut roots = RootCertStore::empty();
        match root_cert.as_deref() {
            None | Some("system") => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?
                {
                    let cert = cert.map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        unverified().map_err(|e| bad(format!("TLS: {e}")))?
    };
    Ok((config, MakeRustlsConnect::new(tls)))
}

fn unverified() -> std::result::Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth())
}

/// libpq's `sslmode=require` without a root certificate: encryption, no identity check.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
