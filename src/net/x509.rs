//! Just enough DER to read a client certificate's subject Common Name,
//! Subject Alternative Names and end of validity (RFC 5280, 4.1, 4.1.2.5
//! and 4.2.1.6), and to write a name and a serial number for the logs.
//!
//! Why not a parser crate: the certificate has already been verified by
//! webpki, and we need two fields. `x509-parser` would bring nom, asn1-rs,
//! der-parser, oid-registry and time for that. This walk only reads: every
//! step is bounds-checked and any surprise yields `None`.

/// One DER element: its tag byte and its contents.
type Tlv<'a> = (u8, &'a [u8]);

/// Splits the next element off `input`. Only low-tag-number form is
/// supported (all tags used below are); lengths up to 4 bytes.
fn next<'a>(input: &mut &'a [u8]) -> Option<Tlv<'a>> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag number form
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite length is not DER
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (body, after) = rest.split_at(len);
    *input = after;
    Some((tag, body))
}

/// Iterates over the elements inside a constructed element's contents.
fn children(mut body: &[u8]) -> impl Iterator<Item = Tlv<'_>> {
    std::iter::from_fn(move || next(&mut body))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
/// 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17, id-ce-subjectAltName.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The elements of TBSCertificate, after the optional version.
struct Tbs<'a> {
    subject: &'a [u8],
    extensions: Option<&'a [u8]>,
}

fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let mut input = cert;
    let (SEQUENCE, cert) = next(&mut input)? else {
        return None;
    };
    let mut cert = cert;
    let (SEQUENCE, tbs) = next(&mut cert)? else {
        return None;
    };
    let mut fields = children(tbs).peekable();
    // version [0] EXPLICIT, absent for v1 certificates.
    if fields.peek()?.0 == 0xa0 {
        fields.next();
    }
    // serialNumber, signature, issuer, validity, then subject.
    let mut fields = fields.skip(4);
    let (SEQUENCE, subject) = fields.next()? else {
        return None;
    };
    // subjectPublicKeyInfo, then optional [1], [2] and [3] extensions.
    let extensions = fields
        .skip(1)
        .find(|(tag, _)| *tag == 0xa3)
        .and_then(|(_, explicit)| {
            let mut explicit = explicit;
            match next(&mut explicit)? {
                (SEQUENCE, exts) => Some(exts),
                _ => None,
            }
        });
    Some(Tbs {
        subject,
        extensions,
    })
}

/// Decodes the string types a directory name may use.
fn directory_string((tag, body): Tlv<'_>) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, and T61String (which in
        // practice holds ASCII or UTF-8).
        0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(body).ok().map(str::to_owned),
        // BMPString: UTF-16 big-endian.
        0x1e if body.len() % 2 == 0 => {
            let units = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// The subject's first Common Name.
pub(crate) fn common_name(cert: &[u8]) -> Option<String> {
    let subject = tbs(cert)?.subject;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF
    // AttributeTypeAndValue ::= SEQUENCE { type OID, value ANY }).
    for (tag, rdn) in children(subject) {
        if tag != SET {
            return None;
        }
        for (tag, atv) in children(rdn) {
            if tag != SEQUENCE {
                return None;
            }
            let mut atv = children(atv);
            if atv.next()? == (OID, OID_COMMON_NAME) {
                return directory_string(atv.next()?);
            }
        }
    }
    None
}

/// The first Subject Alternative Name that is a DNS name, an e-mail
/// address or a URI.
pub(crate) fn subject_alt_name(cert: &[u8]) -> Option<String> {
    let extensions = tbs(cert)?.extensions?;
    // Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE,
    // extnValue OCTET STRING (containing the DER of the extension) }.
    let value = children(extensions).find_map(|(tag, ext)| {
        if tag != SEQUENCE {
            return None;
        }
        let mut ext = children(ext);
        if ext.next()? != (OID, OID_SUBJECT_ALT_NAME) {
            return None;
        }
        ext.find(|(tag, _)| *tag == OCTET_STRING).map(|(_, v)| v)
    })?;
    let mut value = value;
    let (SEQUENCE, names) = next(&mut value)? else {
        return None;
    };
    // GeneralName: [1] rfc822Name, [2] dNSName, [6] URI, all IA5String
    // with an implicit context tag.
    children(names).find_map(|(tag, body)| match tag {
        0x81 | 0x82 | 0x86 => std::str::from_utf8(body).ok().map(str::to_owned),
        _ => None,
    })
}

/// The end of the certificate's validity (`notAfter`), in seconds since
/// the Unix epoch.
pub(crate) fn not_after(cert: &[u8]) -> Option<i64> {
    let mut input = cert;
    let (SEQUENCE, mut cert) = next(&mut input)? else {
        return None;
    };
    let (SEQUENCE, tbs) = next(&mut cert)? else {
        return None;
    };
    let mut fields = children(tbs).peekable();
    if fields.peek()?.0 == 0xa0 {
        fields.next();
    }
    // serialNumber, signature, issuer, then validity.
    let (SEQUENCE, validity) = fields.nth(3)? else {
        return None;
    };
    let (tag, time) = children(validity).nth(1)?;
    let time = std::str::from_utf8(time).ok()?;
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049), GeneralizedTime
    // YYYYMMDDHHMMSSZ: DER requires seconds and Z (RFC 5280 4.1.2.5).
    let (year, rest) = match tag {
        0x17 if time.len() == 13 => {
            let yy: i64 = time.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &time[2..])
        }
        0x18 if time.len() == 15 => (time.get(..4)?.parse().ok()?, &time[4..]),
        _ => return None,
    };
    if !rest.ends_with('Z') || !rest[..rest.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let two = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, h, m, s) = (two(0)?, two(2)?, two(4)?, two(6)?, two(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A distinguished name as RFC 4514 writes it (`CN=alice,O=roost tests`:
/// the last RDN first), from the name's DER contents (without the outer
/// SEQUENCE, as webpki hands it out). For log lines: attribute types
/// without a short name appear as dotted OIDs, and a name that does not
/// decode as `<undecodable>` rather than as nothing.
pub(crate) fn name_text(name: &[u8]) -> String {
    let mut rdns = Vec::new();
    for (tag, rdn) in children(name) {
        if tag != SET {
            return "<undecodable>".into();
        }
        let mut parts = Vec::new();
        for (tag, atv) in children(rdn) {
            let mut atv = children(atv);
            let (Some((OID, oid)), Some(value)) = (atv.next(), atv.next()) else {
                return "<undecodable>".into();
            };
            if tag != SEQUENCE {
                return "<undecodable>".into();
            }
            let value = match directory_string(value) {
                Some(text) => escape_value(&text),
                // RFC 4514, 2.4: a value of another type as '#' and hex.
                None => format!("#{:02x}{:02x}{}", value.0, value.1.len(), hex(value.1)),
            };
            parts.push(format!("{}={value}", attribute_name(oid)));
        }
        rdns.push(parts.join("+"));
    }
    if rdns.is_empty() && !name.is_empty() {
        return "<undecodable>".into();
    }
    rdns.reverse();
    rdns.join(",")
}

/// A certificate serial number (the INTEGER's content bytes) in upper-case
/// hex without the sign byte DER adds, as `openssl x509 -serial` prints it,
/// so a log line can be matched with the certificate on disk.
pub(crate) fn serial_text(serial: &[u8]) -> String {
    let bytes = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    hex(bytes).to_uppercase()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 4514 short names of the attribute types CAs put in subjects.
fn attribute_name(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        // 0.9.2342.19200300.100.1.1 and .25
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        // 1.2.840.113549.1.9.1
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return dotted(oid),
    };
    short.to_owned()
}

/// An OID's dotted decimal form.
fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    let arcs: Vec<String> = arcs.iter().map(u64::to_string).collect();
    arcs.join(".")
}

/// RFC 4514, 2.4: the characters that would change how the string reads
/// are escaped with a backslash.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "roost tests");
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_common_name() {
        let der = cert(Some("sensor-17"), vec![]);
        assert_eq!(common_name(&der).as_deref(), Some("sensor-17"));
        assert_eq!(subject_alt_name(&der), None);
    }

    #[test]
    fn reads_first_usable_subject_alt_name() {
        let sans = vec![
            SanType::IpAddress([10, 0, 0, 1].into()),
            SanType::DnsName("device.example".try_into().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
        ];
        let der = cert(None, sans);
        assert_eq!(subject_alt_name(&der).as_deref(), Some("device.example"));
        assert_eq!(common_name(&der), None);
    }

    #[test]
    fn reads_the_end_of_validity_in_both_time_forms() {
        for (y, m, d, unix) in [
            (2001, 1, 1, 978_307_200),     // UTCTime
            (2049, 12, 31, 2_524_521_600), // UTCTime, last year of it
            (2050, 1, 1, 2_524_608_000),   // GeneralizedTime
            (2124, 2, 29, 4_864_838_400),  // GeneralizedTime, leap day
        ] {
            let mut params = CertificateParams::default();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = KeyPair::generate().unwrap();
            let der = params.self_signed(&key).unwrap().der().to_vec();
            assert_eq!(not_after(&der), Some(unix), "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(not_after(&[0xff; 64]), None);
    }

    #[test]
    fn writes_names_as_rfc_4514_does() {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "NZ");
        dn.push(DnType::OrganizationName, "Acme, Ltd.");
        dn.push(DnType::CommonName, " sensor+17");
        dn.push(
            DnType::CustomDnType(vec![2, 5, 4, 97]),
            "VATNZ-123", // organizationIdentifier: no short name here
        );
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        assert_eq!(
            name_text(cert.subject()),
            r"2.5.4.97=VATNZ-123,CN=\ sensor\+17,O=Acme\, Ltd.,C=NZ"
        );
        assert_eq!(name_text(&[]), "");
        assert_eq!(name_text(&[0x31, 0x03, 0xff]), "<undecodable>");
    }

    #[test]
    fn writes_serials_as_openssl_does() {
        assert_eq!(serial_text(&[0x00, 0x9a, 0x01]), "9A01");
        assert_eq!(serial_text(&[0x11, 0xab]), "11AB");
        assert_eq!(serial_text(&[0x00]), "00");
    }

    #[test]
    fn garbage_and_truncations_give_none() {
        let der = cert(Some("x"), vec![SanType::DnsName("a.b".try_into().unwrap())]);
        for cut in 0..der.len() {
            // Must not panic; a cut certificate may still hold the CN if the
            // cut falls after it, but the outer lengths no longer fit.
            assert_eq!(common_name(&der[..cut]), None);
            assert_eq!(subject_alt_name(&der[..cut]), None);
            assert_eq!(not_after(&der[..cut]), None);
        }
        assert_eq!(common_name(&[0xff; 64]), None);
        assert_eq!(common_name(&[]), None);
    }
}
