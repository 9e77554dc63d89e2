//! Records of uncertified, expired and revoked writers are rejected by capsule verifiers, with
//! certificates issued by the key distributor and revocations published as its signed list.
#![allow(clippy::unwrap_used, reason = "test code")]

mod common;

use common::{NOW, World, seed};
use psl_capsule::{
    CapsuleVerifier, CapsuleWriter, RevocationError, RevocationList, SealedRecord, Validity,
    Verdict, VerifyError, issue_certificate,
};
use psl_trust::{DistributorConfig, KeyDistributor, Provisioned, WorkerEnrollment};

fn provision(world: &World, distributor: &mut KeyDistributor, n: u64) -> Provisioned {
    let challenge = distributor
        .challenge(&world.manager_tee(), seed("nonce", n), NOW)
        .unwrap();
    let worker = WorkerEnrollment::new(
        world.policy.clone(),
        Some(world.metadata.id()),
        &seed("worker channel", n),
        &seed("writer", n),
        Some(world.function),
    );
    let (request, pending) = worker
        .request(&world.worker_tee(), &challenge, NOW)
        .unwrap();
    let (grant, _) = distributor
        .enroll(&request, NOW, seed("entropy", n))
        .unwrap();
    pending.accept(&grant, NOW).unwrap()
}

fn records(provisioned: Provisioned, count: u64) -> Vec<SealedRecord> {
    let parts = provisioned.into_parts();
    let (mut writer, genesis) = CapsuleWriter::start(
        &parts.metadata,
        &parts.data_key,
        parts.writer,
        &parts.certificate,
        1,
        &[],
    )
    .unwrap();
    let mut out = vec![genesis];
    for lamport in 2..2 + count {
        out.push(
            writer
                .seal(psl_capsule::RecordKind::Updates, lamport, &[], b"payload")
                .unwrap(),
        );
    }
    out
}

#[test]
fn provisioned_writer_records_verify() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let provisioned = provision(&world, &mut distributor, 1);
    let data_key = psl_capsule::DataKey::from_bytes(*provisioned.data_key().expose_secret());
    let records = records(provisioned, 3);
    let mut verifier = CapsuleVerifier::new(world.metadata.clone());
    for record in &records {
        let verdict = verifier.verify(record, Validity::At(NOW + 10)).unwrap();
        if let Verdict::Accepted(verified) = verdict
            && record.kind() == psl_capsule::RecordKind::Updates
        {
            assert_eq!(verified.open_body(&data_key).unwrap(), b"payload");
        }
    }
}

#[test]
fn expired_writer_records_are_rejected() {
    let world = World::new();
    let config = DistributorConfig {
        certificate_lifetime_s: 60,
        ..DistributorConfig::default()
    };
    let mut distributor = world.distributor(config);
    let records = records(provision(&world, &mut distributor, 2), 1);
    let mut verifier = CapsuleVerifier::new(world.metadata.clone());
    assert!(matches!(
        verifier.verify(&records[0], Validity::At(NOW + 61)),
        Err(VerifyError::Expired { .. })
    ));
    // A verifier that accepted the chain while valid refuses the next record once expired.
    let mut verifier = CapsuleVerifier::new(world.metadata.clone());
    verifier
        .verify(&records[0], Validity::At(NOW + 30))
        .unwrap();
    assert!(matches!(
        verifier.verify(&records[1], Validity::At(NOW + 61)),
        Err(VerifyError::Expired { .. })
    ));
}

#[test]
fn uncertified_writer_records_are_rejected() {
    let world = World::new();
    // A writer with a certificate from someone else's owner key (not the application's).
    let rogue_owner = psl_capsule::OwnerKey::from_seed(&seed("rogue owner", 0));
    let keys = psl_capsule::WriterKeyPair::from_seed(&seed("rogue writer", 0));
    let certificate = issue_certificate(
        &rogue_owner,
        &world.metadata,
        keys.public_key(),
        [0; 32],
        0,
        u64::MAX,
    );
    let data_key = world.secret.data_key(&world.metadata.id());
    // CapsuleWriter itself refuses to start with a certificate that does not verify.
    assert!(CapsuleWriter::start(&world.metadata, &data_key, keys, &certificate, 1, &[]).is_err());
    // A genuine writer's later record presented without its genesis: unknown writer.
    let mut distributor = world.distributor(DistributorConfig::default());
    let records = records(provision(&world, &mut distributor, 3), 1);
    let mut verifier = CapsuleVerifier::new(world.metadata.clone());
    assert!(matches!(
        verifier.verify(&records[1], Validity::At(NOW)),
        Err(VerifyError::UnknownWriter { .. })
    ));
    // A genesis record whose certificate was forged: flip a byte of the clear certificate.
    let mut bytes = records[0].as_bytes().to_vec();
    let cert = records[0].certificate().unwrap().unwrap().encode();
    let at = bytes
        .windows(cert.len())
        .position(|window| window == cert.as_slice())
        .unwrap();
    bytes[at + 100] ^= 1; // inside the measurement field
    if let Ok(forged) = SealedRecord::decode(&bytes) {
        let result = verifier.verify(&forged, Validity::At(NOW));
        assert!(
            matches!(
                result,
                Err(VerifyError::BadHash { .. } | VerifyError::Uncertified { .. })
            ),
            "{result:?}"
        );
    }
}

#[test]
fn revoked_writer_records_are_rejected_by_every_verifier() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let good = records(provision(&world, &mut distributor, 4), 2);
    let bad = records(provision(&world, &mut distributor, 5), 2);
    let bad_writer = bad[0].writer();

    // Two verifiers: one that already follows the bad writer's chain, one that is new.
    let mut following = CapsuleVerifier::new(world.metadata.clone());
    following.verify(&bad[0], Validity::At(NOW)).unwrap();
    let mut fresh = CapsuleVerifier::new(world.metadata.clone());

    let list = distributor.revoke(bad_writer).unwrap();
    // The list travels as bytes (bus, store) and is checked by each verifier.
    let encoded = list.encode();
    for verifier in [&mut following, &mut fresh] {
        let list = RevocationList::decode(&encoded).unwrap();
        verifier.apply_revocations(&list).unwrap();
        assert!(verifier.is_revoked(&bad_writer));
    }
    assert!(matches!(
        following.verify(&bad[1], Validity::At(NOW)),
        Err(VerifyError::Revoked { .. })
    ));
    assert!(matches!(
        fresh.verify(&bad[0], Validity::At(NOW)),
        Err(VerifyError::Revoked { .. })
    ));
    // Batch verification and the store's time-less mode refuse them too.
    let results = fresh.verify_batch(&bad, Validity::Ignore);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(VerifyError::Revoked { .. })))
    );
    // Other writers are unaffected.
    for record in &good {
        fresh.verify(record, Validity::At(NOW)).unwrap();
    }
    // The revoked writer cannot be provisioned again.
    assert!(distributor.is_revoked(&bad_writer));
}

#[test]
fn revocation_lists_are_authenticated_and_never_roll_back() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let first = distributor.revoke(psl_capsule::WriterId([1; 16])).unwrap();
    let second = distributor.revoke(psl_capsule::WriterId([2; 16])).unwrap();
    assert!(second.serial > first.serial);
    let mut verifier = CapsuleVerifier::new(world.metadata.clone());
    verifier.apply_revocations(&second).unwrap();
    assert!(matches!(
        verifier.apply_revocations(&first),
        Err(RevocationError::Stale { .. })
    ));
    // Forged: a list that drops a writer, or signed by another owner.
    let mut forged = second.clone();
    forged
        .writers
        .retain(|w| *w != psl_capsule::WriterId([2; 16]));
    forged.serial += 1;
    assert_eq!(
        verifier.apply_revocations(&forged),
        Err(RevocationError::BadOwnerSignature)
    );
    let rogue = psl_capsule::OwnerKey::from_seed(&seed("rogue owner", 1));
    let rogue_list = psl_capsule::issue_revocation_list(&rogue, &world.metadata, 99, []).unwrap();
    assert_eq!(
        verifier.apply_revocations(&rogue_list),
        Err(RevocationError::BadOwnerSignature)
    );
    assert!(verifier.is_revoked(&psl_capsule::WriterId([2; 16])));
}
