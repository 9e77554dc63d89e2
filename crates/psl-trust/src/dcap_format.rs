//! Our own parse of a DCAP quote's framing, so that no byte of an accepted quote escapes a check.
//!
//! `dcap-qvl` verifies the signatures, but it skips some bytes no signature covers: it does not
//! compare size fields with what follows them, ignores trailing bytes and the outer
//! certification-data type of v4 quotes, reads the PEM chain leniently, and replaces the chain's
//! copy of the Intel root CA by its pinned root. Here every size field must equal the length of
//! what it announces, the certification-data types must be the ones Intel's quoting enclaves
//! write, the PCK chain must be the canonical PEM of exactly three certificates ending with the
//! pinned Intel SGX Root CA, and nothing may follow the signature data except (TDX) zero padding.
//!
//! Formats accepted (those of the published samples, `tests/fixtures/dcap-qvl`), from Intel's
//! "SGX ECDSA Quote Library API" and "TDX DCAP Quoting Library API" (all integers little-endian):
//!
//! ```text
//! SGX v3: header (48) | enclave report (384) | u32 signature data length | signature data
//!         signature data = ECDSA signature (64) | attestation key (64) | QE report (384)
//!                          | QE report signature (64) | u16 QE auth size | QE auth data
//!                          | u16 certification type = 5 | u32 size | PCK chain (PEM, NUL)
//! TDX v4: header (48) | TD report 1.0 (584) | u32 signature data length | signature data
//!         | zero padding (outside the quote proper, as quote buffers are handed out)
//!         signature data = ECDSA signature (64) | attestation key (64)
//!                          | u16 certification type = 6 | u32 size | QE report certification
//!                          data, which is the SGX v3 layout above from "QE report" on
//! ```
//!
//! Anything else (SGX v4, v5 quotes with TD 1.5 reports, P-384 keys, other certification types) is
//! refused with a [`DcapFormatError`] naming it; supporting one means adding its layout here and
//! a sample to the tests.

use crate::evidence::DcapFormatError;
use crate::limits::CERTIFICATE_DER_BYTES_MAX;
use crate::types::Platform;

/// The Intel SGX Root CA certificate (DER, 659 bytes; subject `CN=Intel SGX Root CA, O=Intel
/// Corporation`, valid 2018-05-21 .. 2049-12-31, SHA-256
/// `44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3`).
///
/// Provenance: byte-identical to `src/TrustedRootCA.der` of `dcap-qvl` 0.7.1 (which that crate
/// downloaded from
/// `https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.cer`
/// and pins for `QuoteVerifier::new_prod`, but does not export), and to the root certificate
/// embedded in both sample quotes. [`crate::dcap`] hands this same pin to `dcap-qvl`, so the root
/// the chain verifies against and the root the quote must carry are one and the same.
pub(crate) const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");

const HEADER_BYTES: usize = 48;
const SGX_REPORT_BYTES: usize = 384;
const TD_REPORT10_BYTES: usize = 584;
const ECDSA_P256_SIGNATURE_BYTES: usize = 64;
const ECDSA_P256_KEY_BYTES: usize = 64;
const QE_REPORT_BYTES: usize = 384;
const QE_REPORT_SIGNATURE_BYTES: usize = 64;
const TEE_TYPE_SGX: u32 = 0;
const TEE_TYPE_TDX: u32 = 0x81;
const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
const CERTIFICATION_PCK_CERT_CHAIN: u16 = 5;
const CERTIFICATION_QE_REPORT: u16 = 6;
/// PCK leaf, PCK platform/processor CA, Intel SGX Root CA.
const PCK_CHAIN_CERTIFICATES: usize = 3;
const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----\n";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----\n";
/// Base64 symbols per PEM line (RFC 7468 strict encoding).
const PEM_LINE: usize = 64;

/// Parses the quote's framing and checks everything no signature covers (see the module doc).
/// Returns the platform the quote is from.
pub(crate) fn check(quote: &[u8]) -> Result<Platform, DcapFormatError> {
    let mut reader = Reader::new(quote);
    let version = reader.u16("header version")?;
    let key_type = reader.u16("header attestation key type")?;
    let tee_type = reader.u32("header TEE type")?;
    let platform = match (version, tee_type) {
        (3, TEE_TYPE_SGX) => Platform::Sgx,
        (4, TEE_TYPE_TDX) => Platform::Tdx,
        _ => return Err(DcapFormatError::UnsupportedFormat { version, tee_type }),
    };
    if key_type != ATTESTATION_KEY_ECDSA_P256 {
        return Err(DcapFormatError::AttestationKeyType(key_type));
    }
    reader.take(HEADER_BYTES.saturating_sub(8), "header")?;
    let report_bytes = match platform {
        Platform::Tdx => TD_REPORT10_BYTES,
        _ => SGX_REPORT_BYTES,
    };
    reader.take(report_bytes, "report body")?;
    let mut signature_data = reader.sized_u32("signature data")?;
    signature_data.take(ECDSA_P256_SIGNATURE_BYTES, "quote signature")?;
    signature_data.take(ECDSA_P256_KEY_BYTES, "attestation key")?;
    let chain = if platform == Platform::Tdx {
        certification_type(&mut signature_data, CERTIFICATION_QE_REPORT, "outer")?;
        let mut qe_data = signature_data.sized_u32("QE report certification data")?;
        let chain = qe_report_certification_data(&mut qe_data)?;
        qe_data.finish()?;
        chain
    } else {
        qe_report_certification_data(&mut signature_data)?
    };
    signature_data.finish()?;
    let rest = reader.rest();
    match platform {
        // TDX quotes arrive in a larger zeroed buffer (configfs-tsm `outblob`, QGS replies): the
        // sample carries 70 zero bytes. They are outside the quote; only zeros are accepted.
        Platform::Tdx => {
            if let Some(at) = rest.iter().position(|byte| *byte != 0) {
                return Err(DcapFormatError::NonZeroPadding {
                    offset: quote.len().saturating_sub(rest.len()).saturating_add(at),
                });
            }
        }
        _ => {
            if !rest.is_empty() {
                return Err(DcapFormatError::TrailingBytes { len: rest.len() });
            }
        }
    }
    let pck_chain = pem_chain(chain)?;
    if pck_chain.last().map(Vec::as_slice) != Some(INTEL_SGX_ROOT_CA_DER) {
        return Err(DcapFormatError::RootMismatch);
    }
    Ok(platform)
}

/// QE report, its signature, the QE authentication data and the PCK chain certification data
/// (type 5). Returns the chain's bytes.
fn qe_report_certification_data<'a>(reader: &mut Reader<'a>) -> Result<&'a [u8], DcapFormatError> {
    reader.take(QE_REPORT_BYTES, "QE report")?;
    reader.take(QE_REPORT_SIGNATURE_BYTES, "QE report signature")?;
    reader.sized_u16("QE authentication data")?;
    certification_type(reader, CERTIFICATION_PCK_CERT_CHAIN, "inner")?;
    Ok(reader.sized_u32("PCK certificate chain")?.rest())
}

fn certification_type(
    reader: &mut Reader<'_>,
    expected: u16,
    which: &'static str,
) -> Result<(), DcapFormatError> {
    let found = reader.u16("certification data type")?;
    if found == expected {
        Ok(())
    } else {
        Err(DcapFormatError::CertificationDataType {
            which,
            expected,
            found,
        })
    }
}

/// A bounds-checked cursor over one length-delimited region.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            offset: 0,
            what: "quote",
        }
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DcapFormatError> {
        let available = self.bytes.len().saturating_sub(self.offset);
        let taken = self
            .offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.offset..end))
            .ok_or(DcapFormatError::Truncated {
                what,
                needed: len,
                available,
            })?;
        self.offset = self.offset.saturating_add(len);
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DcapFormatError> {
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| DcapFormatError::Truncated {
            what,
            needed: N,
            available: bytes.len(),
        })
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DcapFormatError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DcapFormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A region announced by a `u16` size: the size must fit in what is left.
    fn sized_u16(&mut self, what: &'static str) -> Result<Reader<'a>, DcapFormatError> {
        let len = self.u16(what)?;
        self.sized(usize::from(len), what)
    }

    /// A region announced by a `u32` size: the size must fit in what is left.
    fn sized_u32(&mut self, what: &'static str) -> Result<Reader<'a>, DcapFormatError> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.sized(len, what)
    }

    fn sized(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, DcapFormatError> {
        Ok(Reader {
            bytes: self.take(len, what)?,
            offset: 0,
            what,
        })
    }

    fn rest(self) -> &'a [u8] {
        self.bytes.get(self.offset..).unwrap_or_default()
    }

    /// The region's size must equal the length of what was parsed from it.
    fn finish(self) -> Result<(), DcapFormatError> {
        if self.offset == self.bytes.len() {
            Ok(())
        } else {
            Err(DcapFormatError::LengthMismatch {
                what: self.what,
                declared: self.bytes.len(),
                used: self.offset,
            })
        }
    }
}

/// The PCK chain as Intel's quoting enclaves write it: each certificate as strict PEM
/// (`-----BEGIN CERTIFICATE-----`, base64 of the DER in 64-column lines, `-----END
/// CERTIFICATE-----`, every line ending with `\n`), back to back, then one NUL (the chain is a C
/// string). Each block must be exactly the re-encoding of the DER it decodes to, so no byte is
/// free (line breaks, padding bits, spaces). Returns the certificates' DER, leaf first.
fn pem_chain(chain: &[u8]) -> Result<Vec<Vec<u8>>, DcapFormatError> {
    let mut rest = chain
        .strip_suffix(b"\0")
        .ok_or(DcapFormatError::PemNotTerminated)?;
    let mut certificates = Vec::with_capacity(PCK_CHAIN_CERTIFICATES);
    while !rest.is_empty() {
        let index = certificates.len();
        if index == PCK_CHAIN_CERTIFICATES {
            return Err(DcapFormatError::ChainLength { found: index + 1 });
        }
        let not_canonical = |reason| DcapFormatError::PemNotCanonical { index, reason };
        let body = rest
            .strip_prefix(PEM_BEGIN)
            .ok_or(not_canonical("no BEGIN CERTIFICATE line"))?;
        // Base64 has no '-', so the first END line closes this block.
        let end = body
            .windows(PEM_END.len())
            .position(|window| window == PEM_END)
            .ok_or(not_canonical("no END CERTIFICATE line"))?;
        let text = body.get(..end).ok_or(not_canonical("no END line"))?;
        // 4 symbols per 3 bytes plus a newline per 64 symbols bound the DER's size.
        if text.len() / 4 * 3 > CERTIFICATE_DER_BYTES_MAX.saturating_add(3) {
            return Err(not_canonical("certificate too large"));
        }
        let der = base64_decode(text).ok_or(not_canonical("invalid base64"))?;
        if der.len() > CERTIFICATE_DER_BYTES_MAX {
            return Err(not_canonical("certificate too large"));
        }
        let canonical = pem_encode(&der);
        let (block, after) = rest
            .split_at_checked(canonical.len())
            .ok_or(not_canonical("not the canonical encoding of its DER"))?;
        if block != canonical.as_slice() {
            return Err(not_canonical(
                "not the canonical encoding of its DER (64-column lines, no other whitespace, \
                 zero padding bits)",
            ));
        }
        certificates.push(der);
        rest = after;
    }
    if certificates.len() == PCK_CHAIN_CERTIFICATES {
        Ok(certificates)
    } else {
        Err(DcapFormatError::ChainLength {
            found: certificates.len(),
        })
    }
}

fn base64_value(symbol: u8) -> Option<u32> {
    let value = match symbol {
        b'A'..=b'Z' => symbol - b'A',
        b'a'..=b'z' => symbol - b'a' + 26,
        b'0'..=b'9' => symbol - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

fn base64_symbol(value: u32) -> u8 {
    // `value` is six bits; the casts cannot truncate.
    let value = (value & 0x3f) as u8;
    match value {
        0..=25 => b'A' + value,
        26..=51 => b'a' + (value - 26),
        52..=61 => b'0' + (value - 52),
        62 => b'+',
        _ => b'/',
    }
}

/// Decodes standard padded base64, skipping `\n` (the caller compares the re-encoding with the
/// input, so line layout and padding bits are checked there).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let symbols: Vec<u8> = text.iter().copied().filter(|c| *c != b'\n').collect();
    if !symbols.len().is_multiple_of(4) {
        return None;
    }
    let quads = symbols.chunks_exact(4);
    let count = quads.len();
    let mut out = Vec::with_capacity(count.saturating_mul(3));
    for (at, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|c| **c == b'=').count();
        if padding > 2 || (padding > 0 && at + 1 != count) {
            return None;
        }
        let mut bits = 0u32;
        for symbol in quad.iter().take(4 - padding) {
            bits = (bits << 6) | base64_value(*symbol)?;
        }
        bits <<= 6 * padding;
        let [_, first, second, third] = bits.to_be_bytes();
        out.extend([first, second, third].into_iter().take(3 - padding));
    }
    Some(out)
}

/// The strict PEM of one certificate (RFC 7468 section 3 with `\n` line ends).
fn pem_encode(der: &[u8]) -> Vec<u8> {
    let mut base64 = Vec::with_capacity(der.len().div_ceil(3).saturating_mul(4));
    for chunk in der.chunks(3) {
        let byte = |at: usize| u32::from(chunk.get(at).copied().unwrap_or(0));
        let bits = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for at in 0..4 {
            if at <= chunk.len() {
                base64.push(base64_symbol(bits >> (18 - 6 * at)));
            } else {
                base64.push(b'=');
            }
        }
    }
    let lines = base64.len().div_ceil(PEM_LINE);
    let mut pem = Vec::with_capacity(PEM_BEGIN.len() + base64.len() + lines + PEM_END.len());
    pem.extend_from_slice(PEM_BEGIN);
    for line in base64.chunks(PEM_LINE) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(PEM_END);
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    const SGX_QUOTE: &[u8] = include_bytes!("../tests/fixtures/dcap-qvl/sgx_quote");
    const TDX_QUOTE: &[u8] = include_bytes!("../tests/fixtures/dcap-qvl/tdx_quote");

    #[test]
    fn pinned_root_is_intels() {
        let digest = ring::digest::digest(&ring::digest::SHA256, INTEL_SGX_ROOT_CA_DER);
        assert_eq!(
            hex::encode(digest.as_ref()),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
        let subject = b"Intel SGX Root CA";
        assert!(
            INTEL_SGX_ROOT_CA_DER
                .windows(subject.len())
                .any(|window| window == subject)
        );
    }

    #[test]
    fn samples_are_canonical() {
        assert_eq!(check(SGX_QUOTE), Ok(Platform::Sgx));
        assert_eq!(check(TDX_QUOTE), Ok(Platform::Tdx));
    }

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..200usize {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let pem = pem_encode(&der);
            let text = &pem[PEM_BEGIN.len()..pem.len() - PEM_END.len()];
            assert_eq!(base64_decode(text).unwrap(), der, "{len}");
        }
        assert_eq!(
            pem_encode(b"Ma"),
            b"-----BEGIN CERTIFICATE-----\nTWE=\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(base64_decode(b"TW=E"), None);
        assert_eq!(base64_decode(b"T==="), None);
        assert_eq!(base64_decode(b"TWE=TWE="), None);
    }

    #[test]
    fn chain_shapes_are_refused() {
        let root_pem = pem_encode(INTEL_SGX_ROOT_CA_DER);
        let chain = |count: usize, nul: bool| {
            let mut bytes = root_pem.repeat(count);
            if nul {
                bytes.push(0);
            }
            bytes
        };
        assert_eq!(pem_chain(&chain(3, true)).unwrap().len(), 3);
        assert_eq!(
            pem_chain(&chain(3, false)),
            Err(DcapFormatError::PemNotTerminated)
        );
        assert_eq!(
            pem_chain(&chain(2, true)),
            Err(DcapFormatError::ChainLength { found: 2 })
        );
        assert_eq!(
            pem_chain(&chain(4, true)),
            Err(DcapFormatError::ChainLength { found: 4 })
        );
        let mut crlf = chain(3, true);
        crlf.splice(27..27, [b'\r']);
        assert!(matches!(
            pem_chain(&crlf),
            Err(DcapFormatError::PemNotCanonical { index: 0, .. })
        ));
    }

    #[test]
    fn framing_errors_are_typed() {
        // Truncated anywhere.
        for len in [0, 7, 47, 100, 431, 436, 1011, 1100, SGX_QUOTE.len() - 1] {
            assert!(check(&SGX_QUOTE[..len]).is_err(), "{len}");
        }
        let mut sgx = SGX_QUOTE.to_vec();
        sgx.push(0);
        assert_eq!(
            check(&sgx).unwrap_err(),
            DcapFormatError::TrailingBytes { len: 1 }
        );
        let mut tdx = TDX_QUOTE.to_vec();
        *tdx.last_mut().unwrap() = 1;
        assert_eq!(
            check(&tdx).unwrap_err(),
            DcapFormatError::NonZeroPadding {
                offset: TDX_QUOTE.len() - 1
            }
        );
        // Signature data length one larger: the padding is taken into the signature data.
        let mut tdx = TDX_QUOTE.to_vec();
        tdx[632] ^= 1;
        assert!(matches!(
            check(&tdx).unwrap_err(),
            DcapFormatError::LengthMismatch {
                what: "signature data",
                ..
            }
        ));
        // The outer certification type of TDX v4 (after signature and attestation key).
        let mut tdx = TDX_QUOTE.to_vec();
        tdx[636 + 128] = 5;
        assert_eq!(
            check(&tdx).unwrap_err(),
            DcapFormatError::CertificationDataType {
                which: "outer",
                expected: 6,
                found: 5
            }
        );
        let mut sgx = SGX_QUOTE.to_vec();
        sgx[0] = 4;
        assert_eq!(
            check(&sgx).unwrap_err(),
            DcapFormatError::UnsupportedFormat {
                version: 4,
                tee_type: 0
            }
        );
    }
}
