//! The configfs-tsm and Gramine collectors against fake directory trees.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::fs;
use std::path::Path;

use psl_trust::collect::{
    EntryMode, GramineTee, TsmCollector, TsmProvider, TsmTee, vcek_from_cert_table,
};
use psl_trust::{Evidence, Platform, SnpProduct, Tee, TeeError};

const SNP_REPORT_HEX: &str = include_str!("fixtures/sev/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("fixtures/sev/vcek_milan.der");
const SGX_QUOTE: &[u8] = include_bytes!("fixtures/dcap-qvl/sgx_quote");
const TDX_QUOTE: &[u8] = include_bytes!("fixtures/dcap-qvl/tdx_quote");

const VCEK_GUID: [u8; 16] = [
    0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];

fn cert_table(vcek: &[u8]) -> Vec<u8> {
    // One ASK-like entry (another GUID), the VCEK entry, the terminator, then the blobs.
    let mut table = Vec::new();
    let header = 3 * 24;
    let other = [0x4a; 16];
    table.extend_from_slice(&other);
    table.extend_from_slice(&(header as u32).to_le_bytes());
    table.extend_from_slice(&4u32.to_le_bytes());
    table.extend_from_slice(&VCEK_GUID);
    table.extend_from_slice(&((header + 4) as u32).to_le_bytes());
    table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
    table.extend_from_slice(&[0u8; 24]);
    table.extend_from_slice(b"ASK!");
    table.extend_from_slice(vcek);
    table
}

/// A fake configfs-tsm entry as the kernel would show it after a report request.
fn fake_entry(dir: &Path, provider: &str, outblob: &[u8], auxblob: Option<&[u8]>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("provider"), format!("{provider}\n")).unwrap();
    fs::write(dir.join("generation"), "1\n").unwrap();
    fs::write(dir.join("inblob"), b"").unwrap();
    fs::write(dir.join("privlevel"), b"").unwrap();
    fs::write(dir.join("outblob"), outblob).unwrap();
    if let Some(auxblob) = auxblob {
        fs::write(dir.join("auxblob"), auxblob).unwrap();
    }
}

#[test]
fn tsm_snp_collects_report_and_vcek() {
    let root = tempfile::tempdir().unwrap();
    let entry = root.path().join("psl-1");
    let report = hex::decode(SNP_REPORT_HEX.trim()).unwrap();
    fake_entry(&entry, "sev_guest", &report, Some(&cert_table(SNP_VCEK)));
    let collector = TsmCollector::new(root.path(), "psl-1", EntryMode::Reuse).with_privlevel(0);
    let collected = collector.collect(&[0x5a; 64]).unwrap();
    assert_eq!(collected.provider, TsmProvider::SevGuest);
    assert_eq!(collected.outblob, report);
    assert_eq!(fs::read(entry.join("inblob")).unwrap(), vec![0x5a; 64]);
    assert_eq!(fs::read_to_string(entry.join("privlevel")).unwrap(), "0");

    let tee = TsmTee::new(collector, Platform::SevSnp, SnpProduct::Milan).unwrap();
    let evidence = tee.evidence([0x5a; 64]).unwrap();
    let Evidence::SevSnp(snp) = &evidence else {
        panic!("not SNP")
    };
    assert_eq!(snp.vcek, SNP_VCEK);
    // The collected sample report verifies (its report data is the sample's, not ours: the
    // fake kernel does not sign).
    evidence.verify(&psl_trust::Anchors::default(), 0).unwrap();
    assert_eq!(tee.measurement().unwrap().platform(), Platform::SevSnp);
    assert!(matches!(
        tee.sealing_key("x"),
        Err(TeeError::Unsupported(_))
    ));
}

#[test]
fn tsm_tdx_collects_a_quote() {
    let root = tempfile::tempdir().unwrap();
    fake_entry(&root.path().join("e"), "tdx_guest", TDX_QUOTE, None);
    let collector = TsmCollector::new(root.path(), "e", EntryMode::Reuse);
    let tee = TsmTee::new(collector, Platform::Tdx, SnpProduct::Milan).unwrap();
    let Evidence::Tdx(dcap) = tee.evidence([1; 64]).unwrap() else {
        panic!("not TDX")
    };
    assert_eq!(dcap.quote, TDX_QUOTE);
    assert!(dcap.collateral.is_none());
    assert_eq!(tee.measurement().unwrap().platform(), Platform::Tdx);
}

#[test]
fn tsm_refuses_bad_trees() {
    let root = tempfile::tempdir().unwrap();
    // Create mode on a fresh name: the fake tree has no attribute files, so the write fails with
    // an IO error naming inblob, and the entry is removed again.
    let collector = TsmCollector::new(root.path(), "fresh", EntryMode::Create);
    assert!(matches!(
        collector.collect(&[0; 64]),
        Err(TeeError::Io { .. })
    ));
    assert!(!root.path().join("fresh").exists());
    // Create mode on an existing entry: refused (someone else's).
    fake_entry(&root.path().join("taken"), "sev_guest", b"x", None);
    let collector = TsmCollector::new(root.path(), "taken", EntryMode::Create);
    assert!(matches!(
        collector.collect(&[0; 64]),
        Err(TeeError::Io { .. })
    ));
    // Names that escape the root.
    for name in ["", "../x", "a/b", ".hidden"] {
        let collector = TsmCollector::new(root.path(), name, EntryMode::Reuse);
        assert!(matches!(
            collector.collect(&[0; 64]),
            Err(TeeError::Protocol(_))
        ));
    }
    // Unknown provider, empty outblob, bad generation, oversized outblob.
    fake_entry(&root.path().join("p"), "arm_cca_guest", b"x", None);
    let result = TsmCollector::new(root.path(), "p", EntryMode::Reuse).collect(&[0; 64]);
    assert!(matches!(result, Err(TeeError::Protocol(_))), "{result:?}");
    fake_entry(&root.path().join("q"), "tdx_guest", b"", None);
    let result = TsmCollector::new(root.path(), "q", EntryMode::Reuse).collect(&[0; 64]);
    assert!(matches!(result, Err(TeeError::Protocol(_))), "{result:?}");
    fake_entry(&root.path().join("g"), "tdx_guest", b"x", None);
    fs::write(root.path().join("g/generation"), "many").unwrap();
    let result = TsmCollector::new(root.path(), "g", EntryMode::Reuse).collect(&[0; 64]);
    assert!(matches!(result, Err(TeeError::Protocol(_))), "{result:?}");
    fake_entry(
        &root.path().join("big"),
        "tdx_guest",
        &vec![0u8; 200 * 1024],
        None,
    );
    let result = TsmCollector::new(root.path(), "big", EntryMode::Reuse).collect(&[0; 64]);
    assert!(
        matches!(result, Err(TeeError::TooLarge { .. })),
        "{result:?}"
    );
    // SNP without auxblob, and a provider that does not match the platform.
    fake_entry(&root.path().join("s"), "sev_guest", b"x", None);
    let tee = TsmTee::new(
        TsmCollector::new(root.path(), "s", EntryMode::Reuse),
        Platform::SevSnp,
        SnpProduct::Milan,
    )
    .unwrap();
    assert!(matches!(tee.evidence([0; 64]), Err(TeeError::Protocol(_))));
    let tee = TsmTee::new(
        TsmCollector::new(root.path(), "s", EntryMode::Reuse),
        Platform::Tdx,
        SnpProduct::Milan,
    )
    .unwrap();
    assert!(matches!(tee.evidence([0; 64]), Err(TeeError::Protocol(_))));
    assert!(
        TsmTee::new(
            TsmCollector::new(root.path(), "s", EntryMode::Reuse),
            Platform::Sgx,
            SnpProduct::Milan
        )
        .is_err()
    );
}

#[test]
fn cert_table_parser_refuses_bad_tables() {
    assert_eq!(
        vcek_from_cert_table(&cert_table(SNP_VCEK)).unwrap(),
        SNP_VCEK
    );
    assert!(vcek_from_cert_table(&[]).is_err());
    assert!(vcek_from_cert_table(&[0u8; 24]).is_err());
    let mut table = cert_table(SNP_VCEK);
    table[24 + 20..24 + 24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(vcek_from_cert_table(&table).is_err());
    let table = cert_table(SNP_VCEK);
    assert!(vcek_from_cert_table(&table[..30]).is_err());
}

fn fake_gramine(root: &Path, kind: &str, quote: &[u8]) {
    fs::create_dir_all(root.join("keys")).unwrap();
    fs::write(root.join("attestation_type"), kind).unwrap();
    fs::write(root.join("user_report_data"), b"").unwrap();
    fs::write(root.join("quote"), quote).unwrap();
    fs::write(root.join("keys/_sgx_mrenclave"), [0x11u8; 16]).unwrap();
}

#[test]
fn gramine_collects_a_quote_and_a_sealing_key() {
    let root = tempfile::tempdir().unwrap();
    fake_gramine(root.path(), "dcap", SGX_QUOTE);
    let tee = GramineTee::new(root.path());
    let collected = tee.collect(&[7; 64]).unwrap();
    assert_eq!(collected.quote, SGX_QUOTE);
    assert_eq!(
        fs::read(root.path().join("user_report_data")).unwrap(),
        vec![7; 64]
    );
    let Evidence::Sgx(dcap) = tee.evidence([8; 64]).unwrap() else {
        panic!("not SGX")
    };
    assert_eq!(dcap.quote, SGX_QUOTE);
    assert_eq!(tee.measurement().unwrap().platform(), Platform::Sgx);
    let a = tee.sealing_key("cache").unwrap();
    let b = tee.sealing_key("other").unwrap();
    assert_ne!(a.expose_secret(), b.expose_secret());
}

#[test]
fn gramine_refuses_bad_trees() {
    let root = tempfile::tempdir().unwrap();
    fake_gramine(root.path(), "epid", SGX_QUOTE);
    assert!(matches!(
        GramineTee::new(root.path()).evidence([0; 64]),
        Err(TeeError::Protocol(_))
    ));
    fake_gramine(root.path(), "dcap", b"");
    assert!(matches!(
        GramineTee::new(root.path()).evidence([0; 64]),
        Err(TeeError::Protocol(_))
    ));
    fs::write(root.path().join("keys/_sgx_mrenclave"), [0u8; 15]).unwrap();
    assert!(matches!(
        GramineTee::new(root.path()).sealing_key("x"),
        Err(TeeError::Protocol(_))
    ));
    assert!(matches!(
        GramineTee::new(root.path().join("missing")).evidence([0; 64]),
        Err(TeeError::Io { .. })
    ));
}
