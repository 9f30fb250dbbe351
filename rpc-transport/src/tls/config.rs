//! Ready-made rustls configurations: certificates and keys in, `ServerConfig` and
//! `ClientConfig` out, with the `ring` provider and the `trpc/1` ALPN protocol.

use std::io;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use super::ALPN_PROTOCOL;

/// The crypto provider every configuration here uses: rustls's `ring` provider.
///
/// Start a configuration of your own from it with
/// `ServerConfig::builder_with_provider(tls::provider())` (or `ClientConfig`'s), which
/// works whichever provider, if any, the program installed as rustls's default:
///
/// ```
/// use rpc_transport::tls::{self, rustls};
///
/// let config = rustls::ClientConfig::builder_with_provider(tls::provider())
///     .with_safe_default_protocol_versions()
///     .expect("ring supports the default versions")
///     .with_root_certificates(rustls::RootCertStore::empty())
///     .with_no_client_auth();
/// # let _ = config;
/// ```
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Whether `bytes` look like DER (an ASN.1 `SEQUENCE`) rather than PEM text.
fn is_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
}

/// Reads certificates: PEM text with one or more `CERTIFICATE` blocks (a chain, the leaf
/// first; or a bundle of CAs), or one DER certificate. Fails with
/// [`io::ErrorKind::InvalidInput`] if there is none.
///
/// ```
/// # let cert = rcgen::generate_simple_self_signed(["localhost".to_string()]).unwrap().cert;
/// let pem: String = cert.pem(); // e.g. std::fs::read("server.pem")?
/// let chain = rpc_transport::tls::certificates(pem)?;
/// assert_eq!(chain.len(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn certificates(pem_or_der: impl AsRef<[u8]>) -> io::Result<Vec<CertificateDer<'static>>> {
    let bytes = pem_or_der.as_ref();
    if is_der(bytes) {
        return Ok(vec![CertificateDer::from(bytes.to_vec())]);
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("the certificate PEM does not parse: {err}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "no certificate found: expected PEM text with `-----BEGIN CERTIFICATE-----` \
             blocks, or one DER certificate"
                .into(),
        ));
    }
    Ok(certs)
}

/// Reads a private key: PEM text with a `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` or
/// `EC PRIVATE KEY` block, or the same in DER. Fails with [`io::ErrorKind::InvalidInput`]
/// if there is none.
pub fn private_key(pem_or_der: impl AsRef<[u8]>) -> io::Result<PrivateKeyDer<'static>> {
    let bytes = pem_or_der.as_ref();
    if is_der(bytes) {
        return PrivateKeyDer::try_from(bytes.to_vec())
            .map_err(|err| invalid(format!("the DER private key does not parse: {err}")));
    }
    PrivateKeyDer::from_pem_slice(bytes).map_err(|err| {
        invalid(format!(
            "no private key found ({err}): expected PEM text with a `-----BEGIN PRIVATE KEY-----` \
             (or RSA / EC PRIVATE KEY) block, or a DER key"
        ))
    })
}

/// Reads CA certificates into a root store.
fn roots(pem_or_der: &[u8], whose: &str) -> io::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem_or_der)
        .map_err(|err| invalid(format!("the {whose} CA certificates: {err}")))?
    {
        store.add(cert).map_err(|err| {
            invalid(format!(
                "a {whose} CA certificate cannot be used as a root: {err}"
            ))
        })?;
    }
    Ok(store)
}

fn server_builder() -> io::Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS versions: {err}")))
}

fn client_builder() -> io::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS versions: {err}")))
}

fn bad_identity(whose: &str, err: rustls::Error) -> io::Error {
    invalid(format!(
        "the {whose} certificate and key cannot be used: {err} (is the key the one the \
         certificate was issued for?)"
    ))
}

/// What a server offers in ALPN: this protocol, and HTTP/1.1 for the HTTP gateway (a
/// client offering only HTTP gets `http/1.1`; the server serves it if the gateway is on,
/// else refuses the connection as another protocol).
fn server_alpn() -> Vec<Vec<u8>> {
    vec![ALPN_PROTOCOL.to_vec(), HTTP_ALPN.to_vec()]
}

/// HTTP/1.1's ALPN protocol id.
const HTTP_ALPN: &[u8] = b"http/1.1";

/// A server configuration presenting `cert_chain` (PEM or DER: the server's certificate
/// first, then any intermediates) with its private `key`; clients need no certificate.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let config = rpc_transport::tls::server_config(
///     std::fs::read("server.pem")?,
///     std::fs::read("server.key")?,
/// )?;
/// # Ok(()) }
/// ```
pub fn server_config(
    cert_chain: impl AsRef<[u8]>,
    key: impl AsRef<[u8]>,
) -> io::Result<ServerConfig> {
    let mut config = server_builder()?
        .with_no_client_auth()
        .with_single_cert(certificates(cert_chain)?, private_key(key)?)
        .map_err(|err| bad_identity("server's", err))?;
    config.alpn_protocols = server_alpn();
    Ok(config)
}

/// Like [`server_config`], and requires every client to present a certificate issued by
/// one of the CAs in `client_ca` (PEM or DER): mutual TLS. A client without one, or with
/// one from another CA, fails its handshake.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let config = rpc_transport::tls::server_config_mtls(
///     std::fs::read("server.pem")?,
///     std::fs::read("server.key")?,
///     std::fs::read("clients-ca.pem")?,
/// )?;
/// # Ok(()) }
/// ```
pub fn server_config_mtls(
    cert_chain: impl AsRef<[u8]>,
    key: impl AsRef<[u8]>,
    client_ca: impl AsRef<[u8]>,
) -> io::Result<ServerConfig> {
    let roots = roots(client_ca.as_ref(), "client")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|err| invalid(format!("the client CA certificates: {err}")))?;
    let mut config = server_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert_chain)?, private_key(key)?)
        .map_err(|err| bad_identity("server's", err))?;
    config.alpn_protocols = server_alpn();
    Ok(config)
}

/// A client configuration trusting the CAs in `roots` (PEM or DER) to issue server
/// certificates; the client presents none of its own.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let config = rpc_transport::tls::client_config(std::fs::read("ca.pem")?)?;
/// # Ok(()) }
/// ```
pub fn client_config(roots: impl AsRef<[u8]>) -> io::Result<ClientConfig> {
    let roots = self::roots(roots.as_ref(), "server")?;
    let mut config = client_builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(config)
}

/// Like [`client_config`], and presents `cert_chain` (PEM or DER, the client's certificate
/// first) with its private `key` to servers that ask for one: mutual TLS.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let config = rpc_transport::tls::client_config_mtls(
///     std::fs::read("ca.pem")?,
///     std::fs::read("client.pem")?,
///     std::fs::read("client.key")?,
/// )?;
/// # Ok(()) }
/// ```
pub fn client_config_mtls(
    roots: impl AsRef<[u8]>,
    cert_chain: impl AsRef<[u8]>,
    key: impl AsRef<[u8]>,
) -> io::Result<ClientConfig> {
    let roots = self::roots(roots.as_ref(), "server")?;
    let mut config = client_builder()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certificates(cert_chain)?, private_key(key)?)
        .map_err(|err| bad_identity("client's", err))?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(config)
}
