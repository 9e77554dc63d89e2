//! SEV-SNP report verification with the `sev` crate (no OpenSSL): ARK → ASK → VCEK → report.
//!
//! The ARK and ASK are the AMD roots built into `sev` for the named product; the VCEK comes with
//! the evidence. The report must be exactly the canonical encoding of what `sev` parsed (so no
//! byte escapes the signature check), the signature's padding bytes must be zero, and the VCEK
//! must sign the first 0x2A0 bytes.

use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::evidence::{Claims, EvidenceError, SnpEvidence, SnpProduct, SnpTcb, Tcb};
use crate::types::{Measurement, Platform};

/// Size of an SNP attestation report, in bytes.
pub const SNP_REPORT_BYTES: usize = 0x4A0;
/// Offset of the signature in the report (the signed part is everything before it).
const SIGNATURE_OFFSET: usize = 0x2A0;

pub(crate) fn parse(bytes: &[u8]) -> Result<AttestationReport, EvidenceError> {
    if bytes.len() != SNP_REPORT_BYTES {
        return Err(EvidenceError::SnpMalformed(format!(
            "{} bytes, expected {SNP_REPORT_BYTES}",
            bytes.len()
        )));
    }
    let report = AttestationReport::from_bytes(bytes)
        .map_err(|error| EvidenceError::SnpMalformed(error.to_string()))?;
    let canonical = report
        .to_bytes()
        .map_err(|error| EvidenceError::SnpMalformed(error.to_string()))?;
    if canonical.as_slice() != bytes {
        return Err(EvidenceError::SnpNonCanonical);
    }
    // The signature is R and S, each a 72-byte little-endian field holding a 48-byte P-384
    // scalar: the top 24 bytes of each must be zero (`sev` ignores them, so without this check
    // they could be changed without breaking the signature).
    let padding = [
        SIGNATURE_OFFSET + 48..SIGNATURE_OFFSET + 72,
        SIGNATURE_OFFSET + 72 + 48..SIGNATURE_OFFSET + 144,
    ];
    for range in padding {
        if bytes
            .get(range)
            .is_none_or(|pad| pad.iter().any(|byte| *byte != 0))
        {
            return Err(EvidenceError::SnpNonCanonical);
        }
    }
    Ok(report)
}

fn roots(product: SnpProduct) -> Result<ca::Chain, EvidenceError> {
    let result = match product {
        SnpProduct::Milan => {
            builtin::milan::ark().and_then(|ark| Ok((ark, builtin::milan::ask()?)))
        }
        SnpProduct::Genoa => {
            builtin::genoa::ark().and_then(|ark| Ok((ark, builtin::genoa::ask()?)))
        }
        SnpProduct::Turin => {
            builtin::turin::ark().and_then(|ark| Ok((ark, builtin::turin::ask()?)))
        }
    };
    let (ark, ask) = result.map_err(|error| EvidenceError::SnpChain(error.to_string()))?;
    Ok(ca::Chain { ark, ask })
}

pub(crate) fn verify(evidence: &SnpEvidence) -> Result<Claims, EvidenceError> {
    let report = parse(&evidence.report)?;
    let vek = Certificate::from_der(&evidence.vcek)
        .map_err(|error| EvidenceError::SnpBadVcek(error.to_string()))?;
    let chain = Chain {
        ca: roots(evidence.product)?,
        vek,
    };
    (&chain)
        .verify()
        .map_err(|error| EvidenceError::SnpChain(error.to_string()))?;
    (&chain, &report)
        .verify()
        .map_err(|error| EvidenceError::SnpSignature(error.to_string()))?;
    let measurement = Measurement::new(Platform::SevSnp, &report.measurement)
        .ok_or_else(|| EvidenceError::SnpMalformed("measurement length".into()))?;
    let tcb = report.reported_tcb;
    Ok(Claims {
        platform: Platform::SevSnp,
        simulated: false,
        measurement,
        report_data: report.report_data,
        tcb: Tcb::SevSnp(SnpTcb {
            bootloader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
        }),
        debug: report.policy.debug_allowed(),
        role: None,
        function: None,
    })
}
