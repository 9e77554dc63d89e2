//! Attestation evidence: what a TEE produces, its wire encoding, and its verification into
//! [`Claims`].
//!
//! Evidence travels as JSON (binary fields as hex), tagged by `platform`:
//!
//! * `sim`: [`SimEvidence`], an Ed25519 signature by a simulated root key. **No hardware
//!   protection**; it says so in the `simulated` field, in `notice`, and in every `Display`.
//! * `sev-snp`: [`SnpEvidence`], the raw 1184-byte SNP attestation report and the VCEK
//!   certificate (DER) of the chip that signed it; verified ARK → ASK → VCEK → report with the
//!   AMD roots built into the `sev` crate.
//! * `sgx` / `tdx`: [`DcapEvidence`], a DCAP quote and its collateral (Intel TCB info, QE
//!   identity, CRLs); verified by `dcap-qvl` against Intel's SGX root CA (pinned here) at a
//!   caller-given time, after psl-trust checked the quote's unsigned framing (exact sizes,
//!   certification types, canonical PEM chain ending with that root, no trailing data).
//!
//! Verification checks only what the evidence proves (signatures, chains, freshness of the
//! collateral); the application's expectations (measurements, TCB levels, simulated or not) are
//! the [`crate::Policy`]'s job, and the binding of report data to a channel is [`crate::binding`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{CERTIFICATE_DER_BYTES_MAX, EVIDENCE_BYTES_MAX, QUOTE_BYTES_MAX};
use crate::sim::SimEvidence;
use crate::types::{FunctionHash, Measurement, Platform, Role};

/// Evidence from one TEE, as sent over the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "kebab-case")]
pub enum Evidence {
    /// The simulated TEE (no hardware protection).
    Sim(SimEvidence),
    /// An AMD SEV-SNP attestation report.
    SevSnp(SnpEvidence),
    /// An Intel SGX DCAP quote.
    Sgx(DcapEvidence),
    /// An Intel TDX DCAP quote.
    Tdx(DcapEvidence),
}

/// AMD SEV-SNP evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpEvidence {
    /// The raw attestation report (`outblob` of configfs-tsm, or `SNP_GET_REPORT`).
    #[serde(with = "crate::hexser::vec")]
    pub report: Vec<u8>,
    /// The VCEK (or VLEK) certificate, DER, from the `auxblob` certificate table or AMD's KDS.
    #[serde(with = "crate::hexser::vec")]
    pub vcek: Vec<u8>,
    /// Which processor family's built-in ARK/ASK certify the VCEK.
    pub product: SnpProduct,
}

/// The AMD EPYC generations whose ARK/ASK are built into the `sev` crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnpProduct {
    /// EPYC 7003.
    Milan,
    /// EPYC 9004.
    Genoa,
    /// EPYC 9005.
    Turin,
}

/// Intel DCAP evidence (SGX or TDX).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DcapEvidence {
    /// The raw quote (Gramine's `/dev/attestation/quote`, or configfs-tsm `outblob` for TDX).
    #[serde(with = "crate::hexser::vec")]
    pub quote: Vec<u8>,
    /// The collateral (from a PCCS or Intel PCS). Needed to verify; anyone may attach it, since
    /// every part of it is signed by Intel.
    pub collateral: Option<dcap_qvl::QuoteCollateralV3>,
}

/// Why evidence is not genuine or cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The encoded evidence (or a part of it) is larger than allowed.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The evidence does not decode.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// Simulated evidence that does not say it is simulated.
    #[error("simulated evidence must carry simulated = true")]
    SimNotMarked,
    /// Simulated evidence signed by a root key the verifier does not trust.
    #[error("SIMULATED TEE evidence signed by an untrusted simulated root key {0}")]
    SimUntrustedRoot(String),
    /// The simulated measurement is not the hash of the binary identity and function.
    #[error("SIMULATED TEE measurement does not match its binary identity and function")]
    SimMeasurementMismatch,
    /// The simulated root key's signature does not verify.
    #[error("SIMULATED TEE evidence signature does not verify")]
    SimBadSignature,
    /// The SNP report does not parse.
    #[error("SEV-SNP report malformed: {0}")]
    SnpMalformed(String),
    /// The SNP report bytes are not the canonical encoding of what was parsed (reserved or
    /// unknown bytes changed), so the signature would not cover them.
    #[error("SEV-SNP report is not canonical (bytes outside the parsed fields differ)")]
    SnpNonCanonical,
    /// The VCEK certificate does not parse.
    #[error("SEV-SNP VCEK certificate malformed: {0}")]
    SnpBadVcek(String),
    /// ARK → ASK → VCEK does not verify.
    #[error("SEV-SNP certificate chain does not verify: {0}")]
    SnpChain(String),
    /// The VCEK did not sign the report.
    #[error("SEV-SNP report signature does not verify: {0}")]
    SnpSignature(String),
    /// The DCAP evidence has no collateral.
    #[error("{0} quote has no collateral; attach it from a PCCS before verifying")]
    MissingCollateral(Platform),
    /// The quote's TEE type is not the one the evidence claims.
    #[error("evidence claims {claimed} but the quote is from {actual}")]
    PlatformMismatch {
        /// The platform the evidence names.
        claimed: Platform,
        /// The platform the quote is from.
        actual: Platform,
    },
    /// The quote's framing (sizes, certification data, PCK chain encoding, trailing bytes) is not
    /// the exact format Intel's quoting enclaves write, so some bytes would escape verification.
    #[error("{platform} quote is malformed or not canonical: {error}")]
    DcapFormat {
        /// SGX or TDX (as claimed by the evidence).
        platform: Platform,
        /// What is wrong.
        error: DcapFormatError,
    },
    /// `dcap-qvl` refused the quote (signature, certificate chain, collateral, CRL, expiry...).
    #[error("{platform} quote does not verify: {reason}")]
    Dcap {
        /// SGX or TDX.
        platform: Platform,
        /// The verifier's reason.
        reason: String,
    },
}

/// Why a DCAP quote's framing is refused (checked by psl-trust before `dcap-qvl` verifies the
/// signatures; see `docs/trust.md`, "Evidence").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DcapFormatError {
    /// The quote ends inside a field, or a size field announces more than is left.
    #[error("{what}: {needed} bytes needed, {available} left")]
    Truncated {
        /// The field or region.
        what: &'static str,
        /// Its (announced) length.
        needed: usize,
        /// The bytes left in the enclosing region.
        available: usize,
    },
    /// Not one of the accepted formats (SGX quote v3, TDX quote v4).
    #[error(
        "quote version {version} with TEE type {tee_type:#x} is not supported (SGX v3 and TDX v4 are)"
    )]
    UnsupportedFormat {
        /// The header's version.
        version: u16,
        /// The header's TEE type.
        tee_type: u32,
    },
    /// The attestation key is not ECDSA P-256 (type 2).
    #[error("attestation key type {0} is not supported (ECDSA P-256 is)")]
    AttestationKeyType(u16),
    /// A size field does not equal the length of what it announces.
    #[error("{what} declares {declared} bytes but its contents take {used}")]
    LengthMismatch {
        /// The region.
        what: &'static str,
        /// Its size field.
        declared: usize,
        /// The length of its parsed contents.
        used: usize,
    },
    /// A certification data type other than the one Intel's quoting enclaves write: 6 (QE report
    /// certification data, outer, TDX v4) or 5 (PCK certificate chain, inner).
    #[error("{which} certification data type {found}, expected {expected}")]
    CertificationDataType {
        /// `outer` or `inner`.
        which: &'static str,
        /// The expected type.
        expected: u16,
        /// The type in the quote.
        found: u16,
    },
    /// Bytes after an SGX quote's signature data.
    #[error("{len} bytes after the signature data")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// The padding after a TDX quote's signature data is not all zero.
    #[error("non-zero padding byte at offset {offset} after the signature data")]
    NonZeroPadding {
        /// Offset in the quote.
        offset: usize,
    },
    /// The PCK certificate chain does not end with exactly one NUL after the last certificate.
    #[error("the PCK certificate chain does not end with a NUL after the last certificate")]
    PemNotTerminated,
    /// A certificate of the chain is not the strict PEM encoding of its DER.
    #[error("PCK chain certificate {index} is not canonical PEM: {reason}")]
    PemNotCanonical {
        /// Position in the chain (0 = PCK leaf).
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The chain does not hold exactly three certificates (PCK, its CA, Intel root).
    #[error("the PCK certificate chain holds {found} certificates, expected 3")]
    ChainLength {
        /// How many were found (counting stops at 4).
        found: usize,
    },
    /// The chain's last certificate is not the pinned Intel SGX Root CA.
    #[error("the PCK certificate chain's root is not the pinned Intel SGX Root CA")]
    RootMismatch,
}

/// What verified evidence says about the enclave. [`crate::Policy::check`] decides whether the
/// application accepts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// The TEE platform.
    pub platform: Platform,
    /// True for the simulated TEE: **no hardware protection**.
    pub simulated: bool,
    /// The launch measurement.
    pub measurement: Measurement,
    /// The 64 bytes of report data the enclave chose (its binding).
    #[serde(with = "crate::hexser::array")]
    pub report_data: [u8; 64],
    /// The TCB (security version) information.
    pub tcb: Tcb,
    /// Whether the TEE allows debugging (memory readable by the host): never acceptable in
    /// production.
    pub debug: bool,
    /// The role from the verified binding (`None` until [`crate::binding`] checked it).
    pub role: Option<Role>,
    /// The function hash from the verified binding, if any.
    pub function: Option<FunctionHash>,
}

impl fmt::Display for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.simulated {
            f.write_str("SIMULATED TEE (no hardware protection) ")?;
        }
        write!(
            f,
            "platform {} measurement {} tcb {}",
            self.platform, self.measurement, self.tcb
        )?;
        if self.debug {
            f.write_str(" DEBUG")?;
        }
        if let Some(role) = self.role {
            write!(f, " role {role}")?;
        }
        if let Some(function) = &self.function {
            write!(f, " function {function}")?;
        }
        Ok(())
    }
}

/// TCB information by platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Tcb {
    /// The simulated TEE has no TCB.
    Simulated,
    /// SEV-SNP `reported_tcb` (the TCB the VCEK was derived for).
    SevSnp(SnpTcb),
    /// DCAP TCB status as computed by `dcap-qvl` from Intel's TCB info.
    Dcap {
        /// `UpToDate`, `SWHardeningNeeded`, `ConfigurationAndSWHardeningNeeded`, `OutOfDate`...
        status: String,
        /// Intel security advisories that apply.
        advisory_ids: Vec<String>,
    },
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tcb::Simulated => f.write_str("simulated"),
            Tcb::SevSnp(tcb) => write!(f, "{tcb}"),
            Tcb::Dcap {
                status,
                advisory_ids,
            } if advisory_ids.is_empty() => f.write_str(status),
            Tcb::Dcap {
                status,
                advisory_ids,
            } => write!(f, "{status} ({})", advisory_ids.join(", ")),
        }
    }
}

/// SEV-SNP TCB version components (higher is newer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpTcb {
    /// Boot loader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

impl SnpTcb {
    /// Whether every component is at least `min`'s.
    pub fn at_least(&self, min: &SnpTcb) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

impl fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bootloader {} tee {} snp {} microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Trust anchors a verifier needs beyond the built-in ones: the AMD ARK/ASK of the `sev` crate
/// and the Intel SGX Root CA pinned by psl-trust (the same certificate `dcap-qvl` pins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anchors {
    /// Public keys of the simulated roots whose evidence is accepted (only consulted when the
    /// policy allows simulation at all).
    pub sim_roots: Vec<[u8; 32]>,
}

impl Evidence {
    /// The platform this evidence claims.
    pub fn platform(&self) -> Platform {
        match self {
            Evidence::Sim(_) => Platform::Sim,
            Evidence::SevSnp(_) => Platform::SevSnp,
            Evidence::Sgx(_) => Platform::Sgx,
            Evidence::Tdx(_) => Platform::Tdx,
        }
    }

    /// Whether this is simulated evidence.
    pub fn is_simulated(&self) -> bool {
        matches!(self, Evidence::Sim(_))
    }

    /// The JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs to JSON cannot fail (no maps with non-string keys,
        // no custom errors); an empty vector would be refused by any decoder.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes the JSON encoding, refusing inputs over [`EVIDENCE_BYTES_MAX`].
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > EVIDENCE_BYTES_MAX {
            return Err(EvidenceError::TooLarge {
                what: "evidence",
                len: bytes.len(),
                max: EVIDENCE_BYTES_MAX,
            });
        }
        let evidence: Evidence = serde_json::from_slice(bytes)
            .map_err(|error| EvidenceError::Malformed(error.to_string()))?;
        evidence.check_sizes()?;
        Ok(evidence)
    }

    fn check_sizes(&self) -> Result<(), EvidenceError> {
        let check = |what: &'static str, len: usize, max: usize| {
            if len > max {
                Err(EvidenceError::TooLarge { what, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Evidence::Sim(_) => Ok(()),
            Evidence::SevSnp(snp) => {
                check("SNP report", snp.report.len(), QUOTE_BYTES_MAX)?;
                check(
                    "VCEK certificate",
                    snp.vcek.len(),
                    CERTIFICATE_DER_BYTES_MAX,
                )
            }
            Evidence::Sgx(dcap) | Evidence::Tdx(dcap) => {
                check("DCAP quote", dcap.quote.len(), QUOTE_BYTES_MAX)
            }
        }
    }

    /// The report data this evidence carries, without verifying anything (for diagnostics).
    pub fn report_data_unverified(&self) -> Option<[u8; 64]> {
        match self {
            Evidence::Sim(sim) => Some(sim.report_data),
            Evidence::SevSnp(snp) => crate::snp::parse(&snp.report).ok().map(|r| r.report_data),
            Evidence::Sgx(dcap) | Evidence::Tdx(dcap) => {
                crate::dcap::report_data_unverified(&dcap.quote)
            }
        }
    }

    /// Verifies the evidence: signatures, certificate chains and collateral, at `now_s`
    /// (seconds since the Unix epoch; used for DCAP collateral and certificate validity).
    /// Returns the claims with `role` and `function` unset (see [`crate::binding`]).
    pub fn verify(&self, anchors: &Anchors, now_s: u64) -> Result<Claims, EvidenceError> {
        self.check_sizes()?;
        match self {
            Evidence::Sim(sim) => sim.verify(anchors),
            Evidence::SevSnp(snp) => crate::snp::verify(snp),
            Evidence::Sgx(dcap) => crate::dcap::verify(Platform::Sgx, dcap, now_s),
            Evidence::Tdx(dcap) => crate::dcap::verify(Platform::Tdx, dcap, now_s),
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::Sim(sim) => write!(f, "{sim}"),
            Evidence::SevSnp(snp) => write!(
                f,
                "SEV-SNP report ({} bytes, {:?} VCEK)",
                snp.report.len(),
                snp.product
            ),
            Evidence::Sgx(dcap) => write!(f, "SGX DCAP quote ({} bytes)", dcap.quote.len()),
            Evidence::Tdx(dcap) => write!(f, "TDX DCAP quote ({} bytes)", dcap.quote.len()),
        }
    }
}
