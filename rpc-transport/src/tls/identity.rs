//! The identity a verified certificate chain proves: its names and the chain itself.

use bytes::Bytes;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The identity of a peer that presented `chain` (its own certificate first), or `None` if
/// the chain is empty.
pub(super) fn of_chain(chain: &[CertificateDer<'static>]) -> Option<rpc_core::Identity> {
    let leaf = chain.first()?;
    let certificates = chain.iter().map(|cert| Bytes::copy_from_slice(cert));
    Some(rpc_core::Identity::new(names(leaf), certificates))
}

/// The names a certificate was issued for: its DNS and URI subject alternative names, or
/// failing those its subject's common names. A certificate that does not parse has none
/// (rustls verified it, so that does not happen).
fn names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .valid_dns_names()
        .chain(parsed.valid_uri_names())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        names = common_names(parsed.subject());
    }
    names
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (digits, rest) = (rest.get(..count)?, rest.get(count..)?);
        let len = digits
            .iter()
            .fold(0usize, |len, &digit| len << 8 | usize::from(digit));
        (len, rest)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The common names (OID 2.5.4.3) in a certificate subject: the contents of its `Name`, a
/// sequence of sets of (attribute type, value) sequences.
fn common_names(mut subject: &[u8]) -> Vec<String> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const IA5_STRING: u8 = 0x16;

    let mut names = Vec::new();
    while let Some((tag, mut set, rest)) = element(subject) {
        subject = rest;
        if tag != SET {
            continue;
        }
        while let Some((tag, attribute, rest)) = element(set) {
            set = rest;
            if tag != SEQUENCE {
                continue;
            }
            let Some((OID, oid, value)) = element(attribute) else {
                continue;
            };
            if oid != COMMON_NAME {
                continue;
            }
            if let Some((UTF8_STRING | PRINTABLE_STRING | IA5_STRING, text, _)) = element(value) {
                if let Ok(text) = std::str::from_utf8(text) {
                    names.push(text.to_owned());
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(sans: &[&str], common_name: Option<&str>) -> CertificateDer<'static> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn dns_names_come_first_in_order() {
        let cert = leaf(&["billing.internal", "billing"], Some("ignored"));
        let identity = of_chain(std::slice::from_ref(&cert)).unwrap();
        assert_eq!(identity.names(), ["billing.internal", "billing"]);
        assert_eq!(identity.certificates(), [Bytes::copy_from_slice(&cert)]);
    }

    #[test]
    fn uris_count_as_names() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.local".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/billing".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        let identity = of_chain(&[cert]).unwrap();
        assert_eq!(
            identity.names(),
            ["svc.local", "spiffe://example.org/billing"]
        );
    }

    #[test]
    fn the_common_name_names_a_certificate_without_alternative_names() {
        let cert = leaf(&[], Some("batch-job"));
        assert_eq!(of_chain(&[cert]).unwrap().names(), ["batch-job"]);
        let cert = leaf(&[], None);
        assert!(of_chain(&[cert]).unwrap().names().is_empty());
    }

    #[test]
    fn no_chain_no_identity() {
        assert!(of_chain(&[]).is_none());
    }

    #[test]
    fn garbage_has_no_names() {
        assert!(names(&CertificateDer::from(vec![0x30, 0x82, 0xff])).is_empty());
        assert!(common_names(&[0x31, 0x05, 0x30, 0x83]).is_empty());
        assert!(common_names(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}
