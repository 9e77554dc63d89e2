//! Evidence collectors for real hardware: Linux configfs-tsm (SEV-SNP and TDX guests) and
//! Gramine's `/dev/attestation` (SGX). Plain `std::fs`; the root directory is a parameter so the
//! tests run against a fake tree. Every read is bounded.
//!
//! configfs-tsm (Linux >= 6.7, `Documentation/ABI/testing/configfs-tsm-report`): `mkdir
//! <root>/<entry>`, write 64 bytes to `inblob` (optionally `privlevel` first), read `outblob`
//! (the SNP report or TDX quote), `auxblob` (SNP: the certificate table with the VCEK) and
//! `provider` (`sev_guest` or `tdx_guest`), and compare `generation` before and after the read:
//! the kernel bumps it on every write, so a change means another process wrote the entry
//! between our write and read, and the blob may answer someone else's report data.
//!
//! Gramine (`/dev/attestation`): write 64 bytes to `user_report_data`, read `quote`; read
//! `attestation_type` (`dcap` for DCAP quotes); sealing keys are files under `keys/`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::evidence::{DcapEvidence, Evidence, SnpEvidence, SnpProduct};
use crate::limits::COLLECTOR_FILE_BYTES_MAX;
use crate::tee::{SealingKey, Tee, TeeError};
use crate::types::{Measurement, Platform};

/// The default configfs-tsm report directory.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// The default Gramine attestation directory.
pub const GRAMINE_ATTESTATION_ROOT: &str = "/dev/attestation";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TeeError + '_ {
    move |source| TeeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads at most [`COLLECTOR_FILE_BYTES_MAX`] bytes; a longer file is an error.
fn read_bounded(path: &Path) -> Result<Vec<u8>, TeeError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let limit = u64::try_from(COLLECTOR_FILE_BYTES_MAX)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() > COLLECTOR_FILE_BYTES_MAX {
        return Err(TeeError::TooLarge {
            path: path.display().to_string(),
            len: bytes.len(),
            max: COLLECTOR_FILE_BYTES_MAX,
        });
    }
    Ok(bytes)
}

fn read_text(path: &Path) -> Result<String, TeeError> {
    let bytes = read_bounded(path)?;
    String::from_utf8(bytes)
        .map(|text| text.trim().to_string())
        .map_err(|_| TeeError::Protocol(format!("{}: not UTF-8", path.display())))
}

fn read_u64(path: &Path) -> Result<u64, TeeError> {
    let text = read_text(path)?;
    text.parse()
        .map_err(|_| TeeError::Protocol(format!("{}: {text:?} is not a number", path.display())))
}

fn write_all(path: &Path, bytes: &[u8]) -> Result<(), TeeError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))
}

/// The provider of a configfs-tsm report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsmProvider {
    /// `sev_guest`: `outblob` is an SNP report, `auxblob` the certificate table.
    SevGuest,
    /// `tdx_guest`: `outblob` is a TDX quote.
    TdxGuest,
}

/// What one configfs-tsm report request returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// The provider.
    pub provider: TsmProvider,
    /// The report or quote.
    pub outblob: Vec<u8>,
    /// Auxiliary data (SNP certificate table), if the provider gave any.
    pub auxblob: Option<Vec<u8>>,
    /// The generation after our write.
    pub generation: u64,
}

/// How to treat an existing entry directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Create the entry; fail if it exists (another process may own it). Remove it afterwards.
    Create,
    /// Use the entry if it exists (created by the caller or a test fixture); do not remove it.
    Reuse,
}

/// The configfs-tsm collector.
#[derive(Clone, Debug)]
pub struct TsmCollector {
    root: PathBuf,
    entry: String,
    mode: EntryMode,
    privlevel: Option<u8>,
}

impl TsmCollector {
    /// A collector under `root` (normally [`TSM_REPORT_ROOT`]) using the entry directory
    /// `entry` (a name unique to this process, such as `psl-<pid>`).
    pub fn new(root: impl Into<PathBuf>, entry: &str, mode: EntryMode) -> Self {
        TsmCollector {
            root: root.into(),
            entry: entry.to_string(),
            mode,
            privlevel: None,
        }
    }

    /// Writes `privlevel` (SNP VMPL) before the report data.
    pub fn with_privlevel(mut self, privlevel: u8) -> Self {
        self.privlevel = Some(privlevel);
        self
    }

    /// Requests a report over `report_data`.
    pub fn collect(&self, report_data: &[u8; 64]) -> Result<TsmReport, TeeError> {
        if self.entry.is_empty() || self.entry.contains('/') || self.entry.starts_with('.') {
            return Err(TeeError::Protocol(format!(
                "configfs-tsm entry name {:?} is not a plain name",
                self.entry
            )));
        }
        let dir = self.root.join(&self.entry);
        let created = match self.mode {
            EntryMode::Create => {
                fs::create_dir(&dir).map_err(io_error(&dir))?;
                true
            }
            EntryMode::Reuse => {
                if !dir.is_dir() {
                    fs::create_dir(&dir).map_err(io_error(&dir))?;
                    true
                } else {
                    false
                }
            }
        };
        let result = self.collect_in(&dir, report_data);
        if created {
            // Best effort: configfs removes the entry and its attributes on rmdir. A leftover
            // entry holds no secret (only our public report data and the report).
            let _ = fs::remove_dir(&dir);
        }
        result
    }

    fn collect_in(&self, dir: &Path, report_data: &[u8; 64]) -> Result<TsmReport, TeeError> {
        if let Some(privlevel) = self.privlevel {
            write_all(&dir.join("privlevel"), privlevel.to_string().as_bytes())?;
        }
        write_all(&dir.join("inblob"), report_data)?;
        let before = read_u64(&dir.join("generation"))?;
        let provider = match read_text(&dir.join("provider"))?.as_str() {
            "sev_guest" => TsmProvider::SevGuest,
            "tdx_guest" => TsmProvider::TdxGuest,
            other => {
                return Err(TeeError::Protocol(format!(
                    "unknown configfs-tsm provider {:?}",
                    other.chars().take(40).collect::<String>()
                )));
            }
        };
        let outblob = read_bounded(&dir.join("outblob"))?;
        if outblob.is_empty() {
            return Err(TeeError::Protocol("configfs-tsm outblob is empty".into()));
        }
        let auxblob_path = dir.join("auxblob");
        let auxblob = match read_bounded(&auxblob_path) {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => Some(bytes),
            Err(TeeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(error) => return Err(error),
        };
        let after = read_u64(&dir.join("generation"))?;
        if after != before {
            return Err(TeeError::Concurrent {
                path: dir.display().to_string(),
                before,
                after,
            });
        }
        Ok(TsmReport {
            provider,
            outblob,
            auxblob,
            generation: after,
        })
    }
}

/// Extracts the VCEK (DER) from an SNP certificate table (`auxblob`): entries of a 16-byte GUID,
/// a 4-byte little-endian offset and a 4-byte length, ended by an all-zero entry; offsets are
/// from the start of the table.
pub fn vcek_from_cert_table(table: &[u8]) -> Result<Vec<u8>, TeeError> {
    // VCEK GUID 63da758d-e664-4564-adc5-f4b93be8accd in its mixed-endian byte form.
    const VCEK_GUID: [u8; 16] = [
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ];
    let bad = |reason: &str| TeeError::Protocol(format!("SNP certificate table: {reason}"));
    for entry in table.chunks(24) {
        let (Some(guid), Some(offset), Some(length)) =
            (entry.get(..16), entry.get(16..20), entry.get(20..24))
        else {
            return Err(bad("truncated entry"));
        };
        if guid.iter().all(|byte| *byte == 0) {
            break;
        }
        if guid != VCEK_GUID {
            continue;
        }
        let to_usize = |bytes: &[u8]| {
            let mut array = [0u8; 4];
            array.copy_from_slice(bytes);
            usize::try_from(u32::from_le_bytes(array)).map_err(|_| bad("offset"))
        };
        let start = to_usize(offset)?;
        let end = start
            .checked_add(to_usize(length)?)
            .ok_or_else(|| bad("length overflows"))?;
        return table
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| bad("VCEK entry points outside the table"));
    }
    Err(bad("no VCEK entry"))
}

/// A configfs-tsm backed TEE (SEV-SNP or TDX guest).
///
/// SNP evidence carries the VCEK from `auxblob`; TDX evidence carries no collateral, which the
/// verifier (or an untrusted helper) must attach from a PCCS before verification.
#[derive(Clone, Debug)]
pub struct TsmTee {
    collector: TsmCollector,
    platform: Platform,
    snp_product: SnpProduct,
}

impl TsmTee {
    /// A TEE that collects with `collector`. `platform` must be [`Platform::SevSnp`] or
    /// [`Platform::Tdx`]; `snp_product` names the AMD roots for SNP.
    pub fn new(
        collector: TsmCollector,
        platform: Platform,
        snp_product: SnpProduct,
    ) -> Result<Self, TeeError> {
        match platform {
            Platform::SevSnp | Platform::Tdx => Ok(TsmTee {
                collector,
                platform,
                snp_product,
            }),
            _ => Err(TeeError::Unsupported(
                "configfs-tsm serves SEV-SNP and TDX only",
            )),
        }
    }
}

impl Tee for TsmTee {
    fn platform(&self) -> Platform {
        self.platform
    }

    fn measurement(&self) -> Result<Measurement, TeeError> {
        let evidence = self.evidence([0u8; 64])?;
        match &evidence {
            Evidence::SevSnp(snp) => {
                let report = crate::snp::parse(&snp.report)?;
                Measurement::new(Platform::SevSnp, &report.measurement)
                    .ok_or(TeeError::Unsupported("SNP measurement length"))
            }
            Evidence::Tdx(dcap) => {
                let quote = dcap_qvl::quote::Quote::parse(&dcap.quote)
                    .map_err(|error| TeeError::Protocol(format!("TDX quote: {error}")))?;
                let mr_td = match &quote.report {
                    dcap_qvl::quote::Report::TD10(report) => report.mr_td,
                    dcap_qvl::quote::Report::TD15(report) => report.base.mr_td,
                    dcap_qvl::quote::Report::TD15Ex(report) => report.base.base.mr_td,
                    dcap_qvl::quote::Report::SgxEnclave(_) => {
                        return Err(TeeError::Protocol("tdx_guest returned an SGX quote".into()));
                    }
                };
                Measurement::new(Platform::Tdx, &mr_td)
                    .ok_or(TeeError::Unsupported("TDX measurement length"))
            }
            _ => Err(TeeError::Unsupported("unexpected evidence kind")),
        }
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, TeeError> {
        let report = self.collector.collect(&report_data)?;
        match (self.platform, report.provider) {
            (Platform::SevSnp, TsmProvider::SevGuest) => {
                let table = report.auxblob.ok_or_else(|| {
                    TeeError::Protocol(
                        "sev_guest gave no auxblob; fetch the VCEK from AMD KDS instead".into(),
                    )
                })?;
                Ok(Evidence::SevSnp(SnpEvidence {
                    report: report.outblob,
                    vcek: vcek_from_cert_table(&table)?,
                    product: self.snp_product,
                }))
            }
            (Platform::Tdx, TsmProvider::TdxGuest) => Ok(Evidence::Tdx(DcapEvidence {
                quote: report.outblob,
                collateral: None,
            })),
            (platform, provider) => Err(TeeError::Protocol(format!(
                "configured for {platform} but the provider is {provider:?}"
            ))),
        }
    }

    fn sealing_key(&self, _label: &str) -> Result<SealingKey, TeeError> {
        Err(TeeError::Unsupported(
            "configfs-tsm has no key derivation (SNP: MSG_KEY_REQ via /dev/sev-guest; TDX has no \
             sealing key)",
        ))
    }
}

/// What Gramine's `/dev/attestation` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GramineQuote {
    /// `attestation_type` (`dcap`, `epid` or `none`).
    pub attestation_type: String,
    /// The SGX quote.
    pub quote: Vec<u8>,
}

/// Gramine's `/dev/attestation` collector and TEE backend (SGX).
#[derive(Clone, Debug)]
pub struct GramineTee {
    root: PathBuf,
}

impl GramineTee {
    /// A backend reading `root` (normally [`GRAMINE_ATTESTATION_ROOT`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        GramineTee { root: root.into() }
    }

    /// Writes the report data and reads the quote.
    pub fn collect(&self, report_data: &[u8; 64]) -> Result<GramineQuote, TeeError> {
        let attestation_type = read_text(&self.root.join("attestation_type"))?;
        if attestation_type != "dcap" {
            return Err(TeeError::Protocol(format!(
                "Gramine attestation type is {:?}; PSL verifies DCAP quotes only",
                attestation_type.chars().take(40).collect::<String>()
            )));
        }
        write_all(&self.root.join("user_report_data"), report_data)?;
        let quote = read_bounded(&self.root.join("quote"))?;
        if quote.is_empty() {
            return Err(TeeError::Protocol("Gramine returned an empty quote".into()));
        }
        Ok(GramineQuote {
            attestation_type,
            quote,
        })
    }
}

impl Tee for GramineTee {
    fn platform(&self) -> Platform {
        Platform::Sgx
    }

    fn measurement(&self) -> Result<Measurement, TeeError> {
        let quote = self.collect(&[0u8; 64])?;
        let parsed = dcap_qvl::quote::Quote::parse(&quote.quote)
            .map_err(|error| TeeError::Protocol(format!("SGX quote: {error}")))?;
        match &parsed.report {
            dcap_qvl::quote::Report::SgxEnclave(report) => {
                Measurement::new(Platform::Sgx, &report.mr_enclave)
                    .ok_or(TeeError::Unsupported("SGX measurement length"))
            }
            _ => Err(TeeError::Protocol("Gramine returned a TDX quote".into())),
        }
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, TeeError> {
        let quote = self.collect(&report_data)?;
        Ok(Evidence::Sgx(DcapEvidence {
            quote: quote.quote,
            collateral: None,
        }))
    }

    /// Gramine's MRENCLAVE-bound key (`keys/_sgx_mrenclave`, 16 bytes), expanded with BLAKE3
    /// derive-key `PSL Gramine sealing key` and the label.
    fn sealing_key(&self, label: &str) -> Result<SealingKey, TeeError> {
        let path = self.root.join("keys").join("_sgx_mrenclave");
        let raw = zeroize::Zeroizing::new(read_bounded(&path)?);
        if raw.len() != 16 {
            return Err(TeeError::Protocol(format!(
                "{}: {} bytes, expected 16",
                path.display(),
                raw.len()
            )));
        }
        let mut hasher = blake3::Hasher::new_derive_key("PSL Gramine sealing key");
        hasher.update(&raw);
        hasher.update(label.as_bytes());
        Ok(SealingKey::new(*hasher.finalize().as_bytes()))
    }
}
