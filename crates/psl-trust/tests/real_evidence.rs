//! Real evidence samples (copied from the `sev` and `dcap-qvl` crates, see fixtures/NOTICE.md):
//! each verifies with its certificate chain or collateral, and a flipped bit in any byte refuses
//! it with a typed error.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use psl_trust::evidence::{DcapEvidence, SnpEvidence};
use psl_trust::{
    Anchors, Binding, Claims, Evidence, EvidenceError, Measurement, Platform, Policy, PolicyError,
    Role, SnpProduct, SnpTcb, Tcb,
};

const SNP_REPORT_HEX: &str = include_str!("fixtures/sev/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("fixtures/sev/vcek_milan.der");
const SGX_QUOTE: &[u8] = include_bytes!("fixtures/dcap-qvl/sgx_quote");
const SGX_COLLATERAL: &[u8] = include_bytes!("fixtures/dcap-qvl/sgx_quote_collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("fixtures/dcap-qvl/tdx_quote");
const TDX_COLLATERAL: &[u8] = include_bytes!("fixtures/dcap-qvl/tdx_quote_collateral.json");

/// 2025-07-01T00:00:00Z: inside both samples' collateral windows (TCB info and QE identity
/// 2025-06-19T10:56Z .. 2025-07-19T10:01Z, PCK CRLs 2025-06-19T10:23Z .. 2025-07-19T10:00Z).
const DCAP_NOW: u64 = 1_751_328_000;
/// 2026-12-01: after the collateral's nextUpdate.
const LATER: u64 = 1_795_996_800;

fn snp() -> Evidence {
    Evidence::SevSnp(SnpEvidence {
        report: hex::decode(SNP_REPORT_HEX.trim()).unwrap(),
        vcek: SNP_VCEK.to_vec(),
        product: SnpProduct::Milan,
    })
}

fn dcap(quote: &[u8], collateral: &[u8], tdx: bool) -> Evidence {
    let evidence = DcapEvidence {
        quote: quote.to_vec(),
        collateral: Some(serde_json::from_slice(collateral).unwrap()),
    };
    if tdx {
        Evidence::Tdx(evidence)
    } else {
        Evidence::Sgx(evidence)
    }
}

fn verify(evidence: &Evidence, now: u64) -> Result<Claims, EvidenceError> {
    evidence.verify(&Anchors::default(), now)
}

#[test]
fn snp_sample_verifies() {
    let claims = verify(&snp(), 0).unwrap();
    assert_eq!(claims.platform, Platform::SevSnp);
    assert!(!claims.simulated);
    assert_eq!(claims.measurement.as_bytes().len(), 48);
    assert!(matches!(claims.tcb, Tcb::SevSnp(_)));
    println!("{claims}");
}

#[test]
fn snp_sample_round_trips_through_json() {
    let evidence = snp();
    let decoded = Evidence::decode(&evidence.encode()).unwrap();
    assert_eq!(decoded, evidence);
    verify(&decoded, 0).unwrap();
}

#[test]
fn snp_every_flipped_report_byte_is_refused() {
    let Evidence::SevSnp(base) = snp() else {
        unreachable!()
    };
    // Every byte of the 1184-byte report: signed fields, reserved fields and the signature.
    for index in 0..base.report.len() {
        let mut evidence = base.clone();
        evidence.report[index] ^= 0x01;
        let result = verify(&Evidence::SevSnp(evidence), 0);
        assert!(
            matches!(
                result,
                Err(EvidenceError::SnpSignature(_)
                    | EvidenceError::SnpNonCanonical
                    | EvidenceError::SnpMalformed(_))
            ),
            "byte {index}: {result:?}"
        );
    }
}

#[test]
fn snp_flipped_vcek_or_wrong_roots_are_refused() {
    let Evidence::SevSnp(base) = snp() else {
        unreachable!()
    };
    let mut evidence = base.clone();
    let middle = evidence.vcek.len() / 2;
    evidence.vcek[middle] ^= 0x01;
    let result = verify(&Evidence::SevSnp(evidence), 0);
    assert!(
        matches!(
            result,
            Err(EvidenceError::SnpChain(_) | EvidenceError::SnpBadVcek(_))
        ),
        "{result:?}"
    );
    let mut evidence = base;
    evidence.product = SnpProduct::Genoa;
    let result = verify(&Evidence::SevSnp(evidence), 0);
    assert!(
        matches!(result, Err(EvidenceError::SnpChain(_))),
        "{result:?}"
    );
}

#[test]
fn snp_truncated_or_oversized_report_is_refused() {
    let Evidence::SevSnp(base) = snp() else {
        unreachable!()
    };
    for len in [0, 1, 100, base.report.len() - 1] {
        let mut evidence = base.clone();
        evidence.report.truncate(len);
        assert!(matches!(
            verify(&Evidence::SevSnp(evidence), 0),
            Err(EvidenceError::SnpMalformed(_))
        ));
    }
    let mut evidence = base;
    evidence.report.resize(70 * 1024, 0);
    assert!(matches!(
        verify(&Evidence::SevSnp(evidence), 0),
        Err(EvidenceError::TooLarge { .. })
    ));
}

#[test]
fn snp_policy_checks_tcb_and_measurement() {
    let mut claims = verify(&snp(), 0).unwrap();
    let Tcb::SevSnp(tcb) = claims.tcb.clone() else {
        unreachable!()
    };
    claims.role = Some(Role::Worker);
    let mut policy = Policy::strict();
    assert_eq!(
        policy.check(&claims),
        Err(PolicyError::PlatformNotAccepted(Platform::SevSnp))
    );
    policy.tcb.sev_snp_min = Some(SnpTcb {
        microcode: tcb.microcode.saturating_add(1),
        ..tcb
    });
    assert!(matches!(
        policy.check(&claims),
        Err(PolicyError::TcbTooLow { .. })
    ));
    policy.tcb.sev_snp_min = Some(tcb);
    assert!(matches!(
        policy.check(&claims),
        Err(PolicyError::MeasurementNotAllowed { .. })
    ));
    policy.worker.measurements.push(claims.measurement.clone());
    if claims.debug {
        assert_eq!(
            policy.check(&claims),
            Err(PolicyError::DebugNotAllowed(Platform::SevSnp))
        );
        policy.allow_debug = true;
    }
    policy.check(&claims).unwrap();
}

#[test]
fn sgx_sample_verifies_with_collateral() {
    let claims = verify(&dcap(SGX_QUOTE, SGX_COLLATERAL, false), DCAP_NOW).unwrap();
    assert_eq!(claims.platform, Platform::Sgx);
    assert_eq!(claims.measurement.as_bytes().len(), 32);
    assert_eq!(
        claims.tcb,
        Tcb::Dcap {
            status: "ConfigurationAndSWHardeningNeeded".into(),
            advisory_ids: vec!["INTEL-SA-00289".into(), "INTEL-SA-00615".into()],
        }
    );
    println!("{claims}");
}

#[test]
fn tdx_sample_verifies_with_collateral() {
    let claims = verify(&dcap(TDX_QUOTE, TDX_COLLATERAL, true), DCAP_NOW).unwrap();
    assert_eq!(claims.platform, Platform::Tdx);
    assert_eq!(claims.measurement.as_bytes().len(), 48);
    assert_eq!(
        claims.tcb,
        Tcb::Dcap {
            status: "UpToDate".into(),
            advisory_ids: vec![],
        }
    );
    println!("{claims}");
}

#[test]
fn dcap_samples_round_trip_through_json() {
    for (quote, collateral, tdx) in [
        (SGX_QUOTE, SGX_COLLATERAL, false),
        (TDX_QUOTE, TDX_COLLATERAL, true),
    ] {
        let evidence = dcap(quote, collateral, tdx);
        let decoded = Evidence::decode(&evidence.encode()).unwrap();
        assert_eq!(decoded, evidence);
        verify(&decoded, DCAP_NOW).unwrap();
    }
}

/// Flips one bit (`mask`) in every byte of `range` of the quote and checks each flip is refused
/// with a typed error: by psl-trust's framing check (sizes, certification data types, the PEM
/// text and root of the PCK chain, trailing bytes) or by dcap-qvl (signatures, chains,
/// collateral). Returns how many flips each of the two refused.
fn flipped_bytes_are_refused(
    quote: &[u8],
    collateral: &[u8],
    tdx: bool,
    mask: u8,
    range: std::ops::Range<usize>,
) -> (usize, usize) {
    let platform = if tdx { Platform::Tdx } else { Platform::Sgx };
    let base = dcap(quote, collateral, tdx);
    let (Evidence::Sgx(base) | Evidence::Tdx(base)) = base else {
        unreachable!()
    };
    let (mut format, mut dcap_qvl) = (0, 0);
    for index in range.clone() {
        let mut evidence = base.clone();
        evidence.quote[index] ^= mask;
        let evidence = if tdx {
            Evidence::Tdx(evidence)
        } else {
            Evidence::Sgx(evidence)
        };
        match verify(&evidence, DCAP_NOW) {
            Err(EvidenceError::DcapFormat { platform: p, .. }) if p == platform => format += 1,
            Err(EvidenceError::Dcap { platform: p, .. }) if p == platform => dcap_qvl += 1,
            Err(EvidenceError::PlatformMismatch { .. }) => format += 1,
            result => panic!("byte {index} ^ {mask:#x}: {result:?}"),
        }
    }
    assert_eq!(format + dcap_qvl, range.len());
    (format, dcap_qvl)
}

/// The PEM text of the quote's PCK chain.
fn pem_range(quote: &[u8]) -> std::ops::Range<usize> {
    let start = quote
        .windows(27)
        .position(|window| window == b"-----BEGIN CERTIFICATE-----")
        .unwrap();
    let end = quote.iter().rposition(|byte| *byte == b'\n').unwrap() + 1;
    start..end
}

#[test]
fn sgx_every_flipped_byte_is_refused() {
    // 4600 bytes: header, enclave report, signature data length, signature, attestation key,
    // QE report and signature, QE auth data, certification type and size, PEM chain and its NUL.
    let all = 0..SGX_QUOTE.len();
    let (format, dcap_qvl) = flipped_bytes_are_refused(SGX_QUOTE, SGX_COLLATERAL, false, 0x01, all);
    println!("SGX: {format} refused by the framing check, {dcap_qvl} by dcap-qvl");
    // Swapping a base64 letter's case keeps the PEM well-formed: dcap-qvl must see the change.
    let pem = pem_range(SGX_QUOTE);
    let (format, dcap_qvl) = flipped_bytes_are_refused(SGX_QUOTE, SGX_COLLATERAL, false, 0x20, pem);
    println!("SGX PEM ^ 0x20: {format} by the framing check, {dcap_qvl} by dcap-qvl");
}

#[test]
fn tdx_every_flipped_byte_is_refused() {
    // 5006 bytes: as SGX, plus the outer certification type 6 and size around the QE report
    // certification data, and 70 bytes of zero padding after the signature data.
    let all = 0..TDX_QUOTE.len();
    let (format, dcap_qvl) = flipped_bytes_are_refused(TDX_QUOTE, TDX_COLLATERAL, true, 0x01, all);
    println!("TDX: {format} refused by the framing check, {dcap_qvl} by dcap-qvl");
    let pem = pem_range(TDX_QUOTE);
    let (format, dcap_qvl) = flipped_bytes_are_refused(TDX_QUOTE, TDX_COLLATERAL, true, 0x20, pem);
    println!("TDX PEM ^ 0x20: {format} by the framing check, {dcap_qvl} by dcap-qvl");
}

#[test]
fn dcap_pck_chain_in_collateral_does_not_replace_the_quotes() {
    // dcap-qvl verifies a PCK chain found in the collateral instead of the quote's own. Anyone
    // can attach collateral: with the genuine chain there, a tampered (but well-formed) chain in
    // the quote must still be refused.
    let pem = pem_range(TDX_QUOTE);
    let chain_start = pem.start;
    let chain = std::str::from_utf8(&TDX_QUOTE[pem]).unwrap();
    let mut collateral: serde_json::Value = serde_json::from_slice(TDX_COLLATERAL).unwrap();
    collateral["pck_certificate_chain"] = serde_json::Value::String(chain.into());
    let collateral = serde_json::to_vec(&collateral).unwrap();
    verify(&dcap(TDX_QUOTE, &collateral, true), DCAP_NOW).unwrap();
    // Swap the case of one base64 letter inside the PCK leaf's signed part: still canonical PEM.
    let index = chain_start + 28 + 64 * 5 + 10;
    assert!(TDX_QUOTE[index].is_ascii_alphabetic());
    let mut quote = TDX_QUOTE.to_vec();
    quote[index] ^= 0x20;
    let result = verify(&dcap(&quote, &collateral, true), DCAP_NOW);
    assert!(
        matches!(result, Err(EvidenceError::Dcap { .. })),
        "{result:?}"
    );
}

#[test]
fn dcap_report_data_byte_is_covered() {
    // The report data is what binds evidence to a session: flip each of its 64 bytes.
    for (quote, collateral, tdx) in [
        (SGX_QUOTE, SGX_COLLATERAL, false),
        (TDX_QUOTE, TDX_COLLATERAL, true),
    ] {
        let evidence = dcap(quote, collateral, tdx);
        let report_data = evidence.report_data_unverified().unwrap();
        let offset = quote
            .windows(64)
            .position(|window| window == report_data)
            .unwrap();
        for index in offset..offset + 64 {
            let mut bytes = quote.to_vec();
            bytes[index] ^= 0x80;
            assert!(matches!(
                verify(&dcap(&bytes, collateral, tdx), DCAP_NOW),
                Err(EvidenceError::Dcap { .. })
            ));
        }
    }
}

#[test]
fn dcap_flipped_collateral_is_refused() {
    let mut collateral: serde_json::Value = serde_json::from_slice(SGX_COLLATERAL).unwrap();
    let tcb_info =
        collateral["tcb_info"]
            .as_str()
            .unwrap()
            .replacen("\"version\":3", "\"version\":4", 1);
    collateral["tcb_info"] = serde_json::Value::String(tcb_info);
    let bytes = serde_json::to_vec(&collateral).unwrap();
    assert!(matches!(
        verify(&dcap(SGX_QUOTE, &bytes, false), DCAP_NOW),
        Err(EvidenceError::Dcap { .. })
    ));
}

#[test]
fn dcap_expired_collateral_missing_collateral_and_wrong_platform_are_refused() {
    assert!(matches!(
        verify(&dcap(SGX_QUOTE, SGX_COLLATERAL, false), LATER),
        Err(EvidenceError::Dcap { .. })
    ));
    let evidence = Evidence::Sgx(DcapEvidence {
        quote: SGX_QUOTE.to_vec(),
        collateral: None,
    });
    assert_eq!(
        verify(&evidence, DCAP_NOW),
        Err(EvidenceError::MissingCollateral(Platform::Sgx))
    );
    // An SGX quote presented as TDX evidence.
    let result = verify(&dcap(SGX_QUOTE, SGX_COLLATERAL, true), DCAP_NOW);
    assert!(
        matches!(
            result,
            Err(EvidenceError::PlatformMismatch { .. } | EvidenceError::Dcap { .. })
        ),
        "{result:?}"
    );
}

#[test]
fn dcap_policy_checks_status_and_advisories() {
    let mut claims = verify(&dcap(SGX_QUOTE, SGX_COLLATERAL, false), DCAP_NOW).unwrap();
    claims.role = Some(Role::Manager);
    let mut policy = Policy::strict();
    policy.manager.measurements.push(claims.measurement.clone());
    assert!(matches!(
        policy.check(&claims),
        Err(PolicyError::TcbStatusNotAccepted { .. })
    ));
    policy
        .tcb
        .dcap_accepted_status
        .push("ConfigurationAndSWHardeningNeeded".into());
    policy.check(&claims).unwrap();
    policy
        .tcb
        .dcap_rejected_advisories
        .push("INTEL-SA-00615".into());
    assert!(matches!(
        policy.check(&claims),
        Err(PolicyError::AdvisoryRejected { .. })
    ));
}

#[test]
fn real_sample_is_refused_by_the_binding() {
    // The samples' report data is not the hash of any PSL binding: a verifier expecting a
    // session binding refuses them even when the policy accepts the platform.
    let evidence = dcap(TDX_QUOTE, TDX_COLLATERAL, true);
    let claims = verify(&evidence, DCAP_NOW).unwrap();
    let mut policy = Policy::strict();
    policy.worker.measurements.push(claims.measurement.clone());
    let binding = Binding {
        role: Role::Worker,
        channel_key: [1; 32],
        writer_key: Some([2; 32]),
        function: None,
        nonce: [3; 32],
    };
    let error = psl_trust::attest(&policy, &evidence, &binding, DCAP_NOW).unwrap_err();
    assert_eq!(error.class(), "stale-or-replayed", "{error}");
    let _: Measurement = claims.measurement;
}
