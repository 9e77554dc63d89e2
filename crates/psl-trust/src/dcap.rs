//! SGX and TDX quote verification. First [`crate::dcap_format`] checks the bytes no signature
//! covers (sizes, certification types, the PCK chain's PEM and root, trailing data); then
//! `dcap-qvl` (pure Rust, ring backend), given the Intel SGX Root CA pinned in
//! [`crate::dcap_format::INTEL_SGX_ROOT_CA_DER`], checks the quote signature, QE report, PCK
//! chain, CRLs, TCB info and QE identity signatures and validity at the caller's `now`. Debug
//! enclaves and service TDs are refused by `dcap-qvl`'s defaults.

use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::QuoteVerifier;

use crate::dcap_format::INTEL_SGX_ROOT_CA_DER;
use crate::evidence::{Claims, DcapEvidence, EvidenceError, Tcb};
use crate::types::{Measurement, Platform};

fn platform_of(report: &Report) -> Platform {
    match report {
        Report::SgxEnclave(_) => Platform::Sgx,
        Report::TD10(_) | Report::TD15(_) | Report::TD15Ex(_) => Platform::Tdx,
    }
}

pub(crate) fn report_data_unverified(quote: &[u8]) -> Option<[u8; 64]> {
    let quote = Quote::parse(quote).ok()?;
    Some(match &quote.report {
        Report::SgxEnclave(report) => report.report_data,
        Report::TD10(report) => report.report_data,
        Report::TD15(report) => report.base.report_data,
        Report::TD15Ex(report) => report.base.base.report_data,
    })
}

pub(crate) fn verify(
    platform: Platform,
    evidence: &DcapEvidence,
    now_s: u64,
) -> Result<Claims, EvidenceError> {
    let collateral = evidence
        .collateral
        .as_ref()
        .ok_or(EvidenceError::MissingCollateral(platform))?;
    // Cheap and before any signature: most tampering with unsigned bytes stops here.
    let actual = crate::dcap_format::check(&evidence.quote)
        .map_err(|error| EvidenceError::DcapFormat { platform, error })?;
    if actual != platform {
        return Err(EvidenceError::PlatformMismatch {
            claimed: platform,
            actual,
        });
    }
    // `dcap-qvl` prefers a PCK chain in the collateral to the quote's own, which would leave the
    // quote's chain (checked above) unverified; anyone can attach collateral, so drop it. The
    // quotes accepted here always carry their chain (certification data type 5).
    let stripped;
    let collateral = if collateral.pck_certificate_chain.is_some() {
        stripped = dcap_qvl::QuoteCollateralV3 {
            pck_certificate_chain: None,
            ..collateral.clone()
        };
        &stripped
    } else {
        collateral
    };
    let verified = QuoteVerifier::new(INTEL_SGX_ROOT_CA_DER.to_vec())
        .verify(&evidence.quote, collateral, now_s)
        .map_err(|error| EvidenceError::Dcap {
            platform,
            reason: format!("{error:#}"),
        })?;
    let actual = platform_of(&verified.report);
    if actual != platform {
        return Err(EvidenceError::PlatformMismatch {
            claimed: platform,
            actual,
        });
    }
    let (measurement, report_data, debug) = match &verified.report {
        Report::SgxEnclave(report) => (
            Measurement::new(Platform::Sgx, &report.mr_enclave),
            report.report_data,
            // ATTRIBUTES.DEBUG is bit 1 of the first byte.
            report
                .attributes
                .first()
                .is_some_and(|flags| flags & 0x02 != 0),
        ),
        Report::TD10(report) => td_claims(report),
        Report::TD15(report) => td_claims(&report.base),
        Report::TD15Ex(report) => td_claims(&report.base.base),
    };
    let measurement =
        measurement.ok_or_else(|| EvidenceError::Malformed("quote measurement length".into()))?;
    Ok(Claims {
        platform,
        simulated: false,
        measurement,
        report_data,
        tcb: Tcb::Dcap {
            status: verified.status,
            advisory_ids: verified.advisory_ids,
        },
        debug,
        role: None,
        function: None,
    })
}

fn td_claims(report: &dcap_qvl::quote::TDReport10) -> (Option<Measurement>, [u8; 64], bool) {
    (
        Measurement::new(Platform::Tdx, &report.mr_td),
        report.report_data,
        // TDATTRIBUTES.DEBUG is bit 0.
        report
            .td_attributes
            .first()
            .is_some_and(|flags| flags & 0x01 != 0),
    )
}
