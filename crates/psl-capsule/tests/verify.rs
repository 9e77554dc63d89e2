//! Table-driven tamper-detection tests for the verifier (test plan DC-3, B7-B10).

mod common;

use common::{NOW_S, chain, opaque};
use psl_capsule::testkit::TestCapsule;
use psl_capsule::{
    CapsuleVerifier, CapsuleWriter, DataKey, ForkEvidence, Head, Link, RecordKind, SealedRecord,
    Update, Validity, Verdict, VerifyError, decode_updates,
};

fn accept_all(verifier: &mut CapsuleVerifier, records: &[SealedRecord]) {
    for record in records {
        match verifier.verify(record, Validity::At(NOW_S)) {
            Ok(Verdict::Accepted(_)) => {}
            other => panic!("expected accepted for {record:?}, got {other:?}"),
        }
    }
}

/// A record with one link and a multi-update body, for bit flipping.
fn linked_record(capsule: &TestCapsule) -> (Vec<SealedRecord>, SealedRecord) {
    let (_, other) = chain(capsule, 99, 1);
    let (mut writer, mut prefix) = chain(capsule, 1, 1);
    let link = Link::from(other[1].head());
    let target = writer
        .seal_updates(
            10,
            &[link],
            &[Update::put("key", vec![7u8; 40]), Update::delete("x")],
        )
        .unwrap();
    let mut all = other;
    all.append(&mut prefix);
    (all, target)
}

#[test]
fn every_flipped_bit_is_detected() {
    let capsule = TestCapsule::new("flip", 1);
    let (prefix, target) = linked_record(&capsule);
    let bytes = target.as_bytes().to_vec();
    let header_len = target.header_bytes().len();
    let body_len = target.body().len();
    let body_end = header_len + body_len;
    // (class, byte range, accepted failure classes; "decode" = refused by the decoder)
    let table: Vec<(&str, std::ops::Range<usize>, &[&str])> = vec![
        ("version", 0..1, &["decode"]),
        ("kind", 1..2, &["decode", "bad-hash"]),
        ("capsule id", 2..34, &["wrong-capsule"]),
        ("writer id", 34..50, &["bad-hash"]),
        ("seq", 50..58, &["decode", "bad-hash"]),
        ("lamport", 58..66, &["bad-hash"]),
        ("prev hash", 66..98, &["bad-hash"]),
        ("body length", 98..102, &["decode"]),
        ("link count", 102..103, &["decode"]),
        ("link", 103..header_len, &["bad-hash", "decode"]),
        ("ciphertext", header_len..body_end - 16, &["bad-hash"]),
        ("tag", body_end - 16..body_end, &["bad-hash"]),
        ("hash", body_end..body_end + 32, &["bad-hash"]),
        ("signature", body_end + 32..bytes.len(), &["bad-signature"]),
    ];
    assert_eq!(table.last().unwrap().1.end, bytes.len());
    // Refused records never change verifier state, so one verifier serves every flip.
    let mut verifier = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut verifier, &prefix);
    let mut checked = 0;
    for (class, range, allowed) in &table {
        assert!(!range.is_empty(), "{class} is empty");
        for offset in range.clone() {
            for bit in [offset % 8, (offset + 3) % 8] {
                let mut tampered = bytes.clone();
                tampered[offset] ^= 1 << bit;
                let outcome = match SealedRecord::decode(&tampered) {
                    Err(_) => "decode",
                    Ok(record) => match verifier.verify(&record, Validity::At(NOW_S)) {
                        Ok(verdict) => {
                            panic!("{class} byte {offset} bit {bit}: accepted {verdict:?}")
                        }
                        Err(error) => error.class(),
                    },
                };
                assert!(
                    allowed.contains(&outcome),
                    "{class} byte {offset} bit {bit}: got {outcome}, expected one of {allowed:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "{checked}");
    // The untampered record is accepted afterwards.
    accept_all(&mut verifier, &[target]);
}

fn run(
    verifier: &mut CapsuleVerifier,
    records: &[SealedRecord],
) -> Vec<Result<Verdict, VerifyError>> {
    records
        .iter()
        .map(|record| verifier.verify(record, Validity::At(NOW_S)))
        .collect()
}

#[test]
fn log_level_attacks_are_named() {
    let capsule = TestCapsule::new("attacks", 2);
    let other_capsule = TestCapsule::new("elsewhere", 3);
    let (_, r) = chain(&capsule, 1, 4);
    let (_, foreign) = chain(&other_capsule, 1, 2);
    let w = r[0].writer();

    // Dropped record: a gap naming the missing range.
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut v, &r[..2]);
    let e = v.verify(&r[3], Validity::At(NOW_S)).unwrap_err();
    assert_eq!(
        e,
        VerifyError::Gap {
            writer: w,
            missing: 2..3
        }
    );

    // Duplicated record: harmless, reported as Duplicate.
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut v, &r[..3]);
    assert!(matches!(
        v.verify(&r[2], Validity::At(NOW_S)),
        Ok(Verdict::Duplicate { seq: 2, .. })
    ));

    // Replayed older record.
    let e = v.verify(&r[1], Validity::At(NOW_S)).unwrap_err();
    assert_eq!(
        e,
        VerifyError::Replay {
            writer: w,
            seq: 1,
            head: 2
        }
    );

    // Reordered delivery: refused as a gap, then accepted in order.
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    let out = run(
        &mut v,
        &[r[0].clone(), r[2].clone(), r[1].clone(), r[2].clone()],
    );
    assert!(matches!(out[1], Err(VerifyError::Gap { .. })));
    assert!(matches!(out[2], Ok(Verdict::Accepted(_))));
    assert!(matches!(out[3], Ok(Verdict::Accepted(_))));

    // Truncation: fewer records than an authenticated head says.
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut v, &r[..3]);
    let expected = [r[4].head()];
    assert_eq!(
        v.check_heads(&expected).unwrap_err(),
        VerifyError::Truncated {
            writer: w,
            have: Some(2),
            expected: 4
        }
    );
    assert!(v.check_heads(&[r[2].head()]).is_ok());
    let wrong = Head {
        hash: r[1].stored_hash(),
        ..r[2].head()
    };
    assert!(matches!(
        v.check_heads(&[wrong]),
        Err(VerifyError::HeadMismatch { .. })
    ));

    // Spliced from another capsule.
    let e = v.verify(&foreign[1], Validity::At(NOW_S)).unwrap_err();
    assert!(matches!(e, VerifyError::WrongCapsule { .. }), "{e:?}");
    let e = v.verify(&foreign[0], Validity::At(NOW_S)).unwrap_err();
    assert!(matches!(e, VerifyError::WrongCapsule { .. }), "{e:?}");

    // Unknown writer: a record without its genesis.
    let (_, stranger) = chain(&capsule, 7, 1);
    let e = v.verify(&stranger[1], Validity::At(NOW_S)).unwrap_err();
    assert!(matches!(e, VerifyError::UnknownWriter { seq: 1, .. }));
}

#[test]
fn equivocation_is_kept_as_evidence() {
    let capsule = TestCapsule::new("fork", 4);
    // Two writers with the same key (a duplicated enclave) diverge at seq 2.
    let (mut a, mut ra) = chain(&capsule, 1, 1);
    let (mut b, rb) = chain(&capsule, 1, 1);
    assert_eq!(ra, rb, "same key and inputs give the same records");
    ra.push(opaque(&mut a, 10, b"branch a"));
    let b2 = opaque(&mut b, 10, b"branch b");
    let b3 = opaque(&mut b, 11, b"branch b again");
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut v, &ra);
    let error = v.verify(&b2, Validity::At(NOW_S)).unwrap_err();
    let VerifyError::Fork {
        writer,
        seq,
        known_hash,
        conflicting,
    } = error
    else {
        panic!("expected fork, got {error:?}");
    };
    assert_eq!(
        (writer, seq, known_hash),
        (ra[2].writer(), 2, ra[2].stored_hash())
    );
    let evidence = ForkEvidence {
        first: ra[2].signed_header(),
        second: *conflicting,
    };
    assert!(evidence.check(v.certificate(&writer).unwrap()));
    let not_evidence = ForkEvidence {
        first: ra[2].signed_header(),
        second: ra[2].signed_header(),
    };
    assert!(!not_evidence.check(v.certificate(&writer).unwrap()));
    // The next record of the other branch does not chain onto the accepted head.
    assert!(matches!(
        v.verify(&b3, Validity::At(NOW_S)),
        Err(VerifyError::Gap { .. }) | Err(VerifyError::ChainBreak { .. })
    ));
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut v, &ra[..2]);
    accept_all(&mut v, std::slice::from_ref(&b2));
    assert!(matches!(
        v.verify(&ra[2], Validity::At(NOW_S)),
        Err(VerifyError::Fork { .. })
    ));
    accept_all(&mut v, &[b3]);
}

#[test]
fn certificates_are_enforced() {
    let capsule = TestCapsule::new("certs", 5);
    // Expired and not yet valid.
    let (keys, certificate) = capsule.writer_valid(1, 100, 200);
    let (mut writer, genesis) = CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )
    .unwrap();
    let record = opaque(&mut writer, 2, b"x");
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    assert!(matches!(
        v.verify(&genesis, Validity::At(99)),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        v.verify(&genesis, Validity::At(201)),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        v.verify(&genesis, Validity::At(150)),
        Ok(Verdict::Accepted(_))
    ));
    assert!(matches!(
        v.verify(&record, Validity::At(300)),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        v.verify(&record, Validity::Ignore),
        Ok(Verdict::Accepted(_))
    ));

    // Revoked.
    let (_, r) = chain(&capsule, 2, 2);
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    accept_all(&mut v, &r[..2]);
    v.revoke(r[0].writer());
    assert!(matches!(
        v.verify(&r[2], Validity::At(NOW_S)),
        Err(VerifyError::Revoked { .. })
    ));

    // A certificate issued by another owner: uncertified, and the writer refuses it.
    let impostor = TestCapsule::new("certs", 6);
    let (keys, foreign_cert) = impostor.writer(3);
    assert!(
        CapsuleWriter::start(
            &capsule.metadata,
            &capsule.data_key,
            keys,
            &foreign_cert,
            1,
            &[]
        )
        .is_err()
    );
    let (keys, _) = capsule.writer(3);
    let forged_cert = psl_capsule::issue_certificate(
        &impostor.owner,
        &capsule.metadata,
        keys.public_key(),
        [0; 32],
        0,
        u64::MAX,
    );
    let (_, genesis) = CapsuleWriter::start(
        &impostor.metadata,
        &capsule.data_key,
        keys,
        &foreign_cert,
        1,
        &[],
    )
    .unwrap();
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    assert!(matches!(
        v.verify(&genesis, Validity::At(NOW_S)),
        Err(VerifyError::WrongCapsule { .. })
    ));
    assert!(forged_cert.check_binding(&capsule.metadata).is_err());
}

#[test]
fn batch_verification_finds_the_bad_record() {
    let capsule = TestCapsule::new("batch", 7);
    let (_, mut a) = chain(&capsule, 1, 20);
    let (_, b) = chain(&capsule, 2, 20);
    a.extend(b);
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    let results = v.verify_batch(&a, Validity::At(NOW_S));
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Verdict::Accepted(_))))
    );

    let (_, mut c) = chain(&capsule, 3, 20);
    let mut bytes = c[9].as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    c[9] = SealedRecord::decode(&bytes).unwrap();
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    let results = v.verify_batch(&c, Validity::At(NOW_S));
    for (i, result) in results.iter().enumerate() {
        match i {
            9 => assert!(matches!(
                result,
                Err(VerifyError::BadSignature { seq: 9, .. })
            )),
            10.. => assert!(matches!(result, Err(VerifyError::Gap { .. }))),
            _ => assert!(matches!(result, Ok(Verdict::Accepted(_)))),
        }
    }
}

#[test]
fn bodies_open_only_with_the_data_key() {
    let capsule = TestCapsule::new("open", 8);
    let (_, r) = chain(&capsule, 1, 2);
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    let Ok(Verdict::Accepted(genesis)) = v.verify(&r[0], Validity::At(NOW_S)) else {
        panic!()
    };
    assert!(genesis.open_body(&capsule.data_key).is_err());
    let Ok(Verdict::Accepted(first)) = v.verify(&r[1], Validity::At(NOW_S)) else {
        panic!()
    };
    let body = first.open_body(&capsule.data_key).unwrap();
    assert_eq!(
        decode_updates(&body).unwrap(),
        vec![Update::put("k0", "v0"), Update::delete("gone")]
    );
    let wrong = DataKey::from_bytes([9; 32]);
    assert!(first.open_body(&wrong).is_err());
    // The header is the associated data: the body of seq 1 does not open as seq 2's.
    let subkey = capsule
        .data_key
        .writer_subkey(&capsule.id(), &r[1].writer());
    let mut spliced = r[2].header_bytes().to_vec();
    spliced.extend_from_slice(r[1].body());
    spliced.extend_from_slice(&[0u8; 96]);
    let spliced = SealedRecord::decode(&spliced).unwrap();
    assert!(psl_capsule::verify::open_record_body(&spliced, &subkey).is_err());
    assert_eq!(RecordKind::Updates, spliced.kind());
}

#[test]
fn verifier_memory_is_bounded() {
    let capsule = TestCapsule::new("bounded", 9);
    let limits = psl_capsule::VerifierLimits {
        hash_window: 4,
        writers_max: 1,
    };
    let (_, r) = chain(&capsule, 1, 10);
    let (_, s) = chain(&capsule, 2, 1);
    let mut v = CapsuleVerifier::with_limits(capsule.metadata.clone(), limits);
    accept_all(&mut v, &r);
    assert!(matches!(
        v.verify(&r[2], Validity::At(NOW_S)),
        Err(VerifyError::BelowWindow { .. })
    ));
    assert!(matches!(
        v.verify(&r[8], Validity::At(NOW_S)),
        Err(VerifyError::Replay { .. })
    ));
    assert!(matches!(
        v.verify(&s[0], Validity::At(NOW_S)),
        Err(VerifyError::TooManyWriters { .. })
    ));
}

#[test]
fn resume_from_an_authenticated_head() {
    let capsule = TestCapsule::new("resume", 10);
    let (_, r) = chain(&capsule, 1, 5);
    let certificate = r[0].certificate().unwrap().unwrap();
    let mut v = CapsuleVerifier::new(capsule.metadata.clone());
    v.resume_writer(&certificate, r[3].head(), 4, Validity::At(NOW_S))
        .unwrap();
    assert!(matches!(
        v.verify(&r[4], Validity::At(NOW_S)),
        Ok(Verdict::Accepted(_))
    ));
    assert!(matches!(
        v.verify(&r[5], Validity::At(NOW_S)),
        Ok(Verdict::Accepted(_))
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SealedRecord::decode(&bytes);
            let _ = decode_updates(&bytes);
            let _ = psl_capsule::WriterCertificate::decode(&bytes);
            let _ = psl_capsule::CapsuleMetadata::decode(&bytes);
        }

        /// Any non-empty XOR mask applied to a valid record is never accepted.
        #[test]
        fn mutations_are_never_accepted(offset in 0usize..400, mask in 1u8..=255) {
            let capsule = TestCapsule::new("prop", 11);
            let (_, r) = chain(&capsule, 1, 1);
            let mut bytes = r[1].as_bytes().to_vec();
            let offset = offset % bytes.len();
            bytes[offset] ^= mask;
            if let Ok(record) = SealedRecord::decode(&bytes) {
                let mut v = CapsuleVerifier::new(capsule.metadata.clone());
                v.verify(&r[0], Validity::At(NOW_S)).unwrap();
                prop_assert!(v.verify(&record, Validity::At(NOW_S)).is_err());
            }
        }
    }
}
