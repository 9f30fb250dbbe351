//! Turning TLS failures into errors that say what was refused and what to do.
//!
//! A certificate either end refuses becomes [`io::ErrorKind::PermissionDenied`], which a
//! client reports as `Unauthenticated`; a peer that does not speak TLS becomes
//! [`io::ErrorKind::InvalidData`].

use std::io;

use tokio_rustls::rustls::{AlertDescription, CertificateError, Error as TlsError};

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
fn tls_error(err: &io::Error) -> Option<&TlsError> {
    err.get_ref()?.downcast_ref::<TlsError>()
}

fn denied(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Explains a failed client handshake with the server named `server_name`.
pub(super) fn client_handshake(err: io::Error, server_name: &str) -> io::Error {
    let Some(tls) = tls_error(&err) else {
        return match err.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => io::Error::new(
                err.kind(),
                format!(
                    "the server closed the connection during the TLS handshake ({err}): does it \
                     speak TLS? If not, connect with rpc_transport::tcp"
                ),
            ),
            _ => err,
        };
    };
    match tls {
        TlsError::InvalidCertificate(cert) => server_certificate(cert, server_name),
        TlsError::AlertReceived(alert) => alert_to_client(*alert),
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::PeerSentOversizedRecord => invalid(format!(
            "the server does not speak TLS (its answer is no TLS handshake: {tls}); connect to \
             it with rpc_transport::tcp, or check the address"
        )),
        TlsError::NoApplicationProtocol => invalid(no_alpn()),
        _ => invalid(format!("the TLS handshake with the server failed: {tls}")),
    }
}

/// Explains a server certificate the client refused.
fn server_certificate(cert: &CertificateError, server_name: &str) -> io::Error {
    match cert {
        CertificateError::UnknownIssuer => denied(
            "the server's certificate is not trusted: UnknownIssuer (no CA among the client's \
             roots issued it); add its CA to the client's roots (tls::client_config)"
                .into(),
        ),
        CertificateError::BadSignature => denied(
            "the server's certificate is not trusted: BadSignature (a CA among the client's \
             roots has the name of its issuer but did not sign it); add the CA that issued it \
             to the client's roots (tls::client_config)"
                .into(),
        ),
        CertificateError::NotValidForNameContext { presented, .. } => denied(format!(
            "the server's certificate is not valid for the name `{server_name}` (it is for: \
             {}); connect with a name it was issued for, or reissue it",
            presented
                .iter()
                .map(|name| plain_name(name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        CertificateError::NotValidForName => denied(format!(
            "the server's certificate is not valid for the name `{server_name}`; connect with a \
             name it was issued for, or reissue it"
        )),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => denied(format!(
            "the server's certificate has expired ({cert}); renew it"
        )),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            denied(format!(
                "the server's certificate is not valid yet ({cert}); check both machines' clocks"
            ))
        }
        other => denied(format!(
            "the server's certificate is not trusted: {other}; check that it was issued by a \
             CA among the client's roots, for this name, and is still valid"
        )),
    }
}

/// `other.example` out of rustls's `DnsName("other.example")`; anything else as it is.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once("(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .unwrap_or(presented)
}

/// Explains an alert a client received, during its handshake or after (with TLS 1.3 the
/// server checks a client certificate after the client's handshake is complete).
fn alert_to_client(alert: AlertDescription) -> io::Error {
    match alert {
        AlertDescription::CertificateRequired => denied(
            "the server requires a client certificate (alert: CertificateRequired); give the \
             client one with tls::client_config_mtls"
                .into(),
        ),
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateRevoked
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnknownCA
        | AlertDescription::AccessDenied => denied(format!(
            "the server refused this client's certificate (alert: {alert:?}); use a \
             certificate issued by a CA the server trusts for clients, valid now"
        )),
        AlertDescription::NoApplicationProtocol => invalid(no_alpn()),
        AlertDescription::DecodeError | AlertDescription::UnexpectedMessage => invalid(format!(
            "the server could not make sense of this client's TLS (alert: {alert:?}); does it \
             speak TLS?"
        )),
        other => invalid(format!(
            "the server ended the TLS connection (alert: {other:?})"
        )),
    }
}

fn no_alpn() -> String {
    format!(
        "the server does not speak {} (no ALPN protocol in common): it is not an rpc server, \
         or another version",
        String::from_utf8_lossy(super::ALPN_PROTOCOL)
    )
}

/// Explains a failed server handshake, for the log.
pub(super) fn server_handshake(err: io::Error) -> io::Error {
    let Some(tls) = tls_error(&err) else {
        return err;
    };
    match tls {
        TlsError::InvalidCertificate(cert) => denied(format!(
            "refused the client's certificate: {cert}; it must be issued by a CA in the \
             server's client roots (tls::server_config_mtls)"
        )),
        TlsError::NoCertificatesPresented => {
            denied("the client presented no certificate, and this server requires one".into())
        }
        TlsError::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::DecryptError),
        ) => denied(format!(
            "the client refused this server's certificate (alert: {alert:?}); does it trust \
             the CA that issued it, under the name it connects with?"
        )),
        TlsError::AlertReceived(alert) => {
            invalid(format!("the client ended the handshake (alert: {alert:?})"))
        }
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. } => invalid(format!(
            "the client does not speak TLS ({tls}); it was sent a TLS alert"
        )),
        _ => invalid(format!("{tls}")),
    }
}

/// Explains a failure reading or writing an established connection.
pub(super) fn on_stream(err: io::Error, client: bool) -> io::Error {
    match tls_error(&err) {
        Some(TlsError::AlertReceived(alert)) if client => alert_to_client(*alert),
        Some(TlsError::AlertReceived(alert)) => {
            io::Error::new(err.kind(), format!("the client sent TLS alert {alert:?}"))
        }
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(err: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn an_unknown_issuer_is_a_refusal_saying_what_to_do() {
        let err = client_handshake(
            wrap(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            "localhost",
        );
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains("not trusted: UnknownIssuer"),
            "{err}"
        );
        assert!(err.to_string().contains("roots"), "{err}");
    }

    #[test]
    fn a_refused_client_certificate_is_a_refusal() {
        for alert in [
            AlertDescription::UnknownCA,
            AlertDescription::BadCertificate,
            AlertDescription::CertificateRequired,
        ] {
            let err = on_stream(wrap(TlsError::AlertReceived(alert)), true);
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
            assert!(err.to_string().contains(&format!("{alert:?}")), "{err}");
        }
    }

    #[test]
    fn another_name_is_a_refusal_naming_both() {
        let err = client_handshake(
            wrap(TlsError::InvalidCertificate(
                CertificateError::NotValidForNameContext {
                    expected: "localhost".try_into().unwrap(),
                    presented: vec!["DnsName(\"other.example\")".into(), "odd".into()],
                },
            )),
            "localhost",
        );
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string()
                .contains("not valid for the name `localhost` (it is for: other.example, odd)"),
            "{err}"
        );
    }

    #[test]
    fn garbage_means_no_tls() {
        let err = client_handshake(
            wrap(TlsError::InvalidMessage(
                tokio_rustls::rustls::InvalidMessage::InvalidContentType,
            )),
            "localhost",
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("does not speak TLS"), "{err}");
    }

    #[test]
    fn other_errors_pass_through() {
        let err = on_stream(io::Error::new(io::ErrorKind::BrokenPipe, "gone"), true);
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
