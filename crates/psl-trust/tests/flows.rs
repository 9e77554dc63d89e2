//! The prepare phase and key distribution with the simulated TEE, and every refusal the issue
//! asks for: wrong measurement, replayed evidence, tampered evidence, simulated evidence under a
//! strict policy, a function not in the policy, revoked writers. On refusal no key leaves the
//! manager.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

mod common;

use common::{NOW, World, seed};
use psl_trust::{
    AttestError, BindingError, DistributorConfig, EnrollError, Evidence, EvidenceError,
    FunctionHash, ManagerEndpoint, PolicyError, PrepareClient, PrepareError, Refusal, SimRootKey,
    SimTee, Tee, WorkerEnrollment,
};

fn enroll_request(
    world: &World,
    distributor: &mut psl_trust::KeyDistributor,
    tee: &dyn Tee,
    function: Option<FunctionHash>,
    n: u64,
) -> (Vec<u8>, psl_trust::PendingEnrollment) {
    let challenge = distributor
        .challenge(&world.manager_tee(), seed("nonce", n), NOW)
        .unwrap();
    let worker = WorkerEnrollment::new(
        world.policy.clone(),
        Some(world.metadata.id()),
        &seed("worker channel", n),
        &seed("writer", n),
        function,
    );
    worker.request(tee, &challenge, NOW).unwrap()
}

fn refusal(result: Result<(Vec<u8>, psl_trust::distribute::IssuedWriter), Refusal>) -> Refusal {
    match result {
        Ok(_) => panic!("expected a refusal, got a grant"),
        Err(refusal) => refusal,
    }
}

#[test]
fn prepare_phase_provisions_the_owner_secret() {
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 0));
    let (offer, session) = endpoint
        .respond(&world.manager_tee(), &client.challenge())
        .unwrap();
    let manager = client.verify_offer(&offer, NOW).unwrap();
    assert!(manager.claims().simulated);
    assert!(manager.claims().to_string().starts_with("SIMULATED TEE"));
    let sealed = manager
        .seal_owner_secret(&world.secret, seed("entropy", 0))
        .unwrap();
    // The secret is not in the sealed message.
    let needle = hex::encode(world.secret.expose_secret());
    assert!(!String::from_utf8_lossy(&sealed).contains(&needle));
    let opened = session.open(&endpoint, &sealed).unwrap();
    assert_eq!(opened.expose_secret(), world.secret.expose_secret());
}

#[test]
fn prepare_refuses_a_replayed_offer() {
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let old_client = PrepareClient::new(world.policy.clone(), seed("client nonce", 1));
    let (old_offer, _) = endpoint
        .respond(&world.manager_tee(), &old_client.challenge())
        .unwrap();
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 2));
    let error = client.verify_offer(&old_offer, NOW).unwrap_err();
    assert!(
        matches!(
            error,
            PrepareError::Attest(AttestError::Binding(BindingError::ReportDataMismatch))
        ),
        "{error}"
    );
    // Same evidence with the echoed nonce rewritten: still bound to the old nonce.
    let mut offer: serde_json::Value = serde_json::from_slice(&old_offer).unwrap();
    offer["nonce"] = serde_json::Value::String(hex::encode(seed("client nonce", 2)));
    let error = client
        .verify_offer(&serde_json::to_vec(&offer).unwrap(), NOW)
        .unwrap_err();
    assert!(matches!(
        error,
        PrepareError::Attest(AttestError::Binding(BindingError::ReportDataMismatch))
    ));
}

#[test]
fn prepare_refuses_a_substituted_channel_key() {
    // A man in the middle keeps the genuine evidence but offers its own channel key.
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 3));
    let (offer, _) = endpoint
        .respond(&world.manager_tee(), &client.challenge())
        .unwrap();
    let mut offer: serde_json::Value = serde_json::from_slice(&offer).unwrap();
    let attacker = ManagerEndpoint::new(&seed("attacker", 0));
    offer["channel_key"] = serde_json::Value::String(hex::encode(attacker.channel().public_key()));
    let error = client
        .verify_offer(&serde_json::to_vec(&offer).unwrap(), NOW)
        .unwrap_err();
    assert!(matches!(
        error,
        PrepareError::Attest(AttestError::Binding(BindingError::ReportDataMismatch))
    ));
}

#[test]
fn prepare_refuses_a_wrong_manager_measurement_and_a_worker_binary() {
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 4));
    let tampered_binary = SimTee::new(
        &world.root,
        psl_trust::BinaryIdentity::named("psl-manager", "patched"),
        None,
    );
    let (offer, _) = endpoint
        .respond(&tampered_binary, &client.challenge())
        .unwrap();
    let error = client.verify_offer(&offer, NOW).unwrap_err();
    assert!(
        matches!(
            error,
            PrepareError::Attest(AttestError::Policy(
                PolicyError::MeasurementNotAllowed { .. }
            ))
        ),
        "{error}"
    );
    // A worker enclave (with a function loaded) pretending to be the manager: its evidence
    // measured a function the manager binding does not name.
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 5));
    let (offer, _) = endpoint
        .respond(&world.worker_tee(), &client.challenge())
        .unwrap();
    let error = client.verify_offer(&offer, NOW).unwrap_err();
    assert!(
        matches!(
            error,
            PrepareError::Attest(AttestError::Binding(BindingError::FunctionMismatch { .. }))
        ),
        "{error}"
    );
    // The worker binary without a function: its measurement is not a manager's.
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 15));
    let idle_worker = SimTee::new(&world.root, world.worker_binary, None);
    let (offer, _) = endpoint.respond(&idle_worker, &client.challenge()).unwrap();
    assert!(matches!(
        client.verify_offer(&offer, NOW).unwrap_err(),
        PrepareError::Attest(AttestError::Policy(
            PolicyError::MeasurementNotAllowed { .. }
        ))
    ));
}

#[test]
fn prepare_refuses_sim_under_a_strict_policy_and_an_untrusted_root() {
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let mut strict = world.policy.clone();
    strict.allow_sim = false;
    let client = PrepareClient::new(strict, seed("client nonce", 6));
    let (offer, _) = endpoint
        .respond(&world.manager_tee(), &client.challenge())
        .unwrap();
    let error = client.verify_offer(&offer, NOW).unwrap_err();
    assert!(
        matches!(
            error,
            PrepareError::Attest(AttestError::Policy(PolicyError::SimulatedNotAllowed))
        ),
        "{error}"
    );
    assert!(error.to_string().contains("SIMULATED TEE"));

    let other_root = SimRootKey::from_seed(&seed("other root", 0));
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 7));
    let rogue = SimTee::new(&other_root, world.manager_binary, None);
    let (offer, _) = endpoint.respond(&rogue, &client.challenge()).unwrap();
    assert!(matches!(
        client.verify_offer(&offer, NOW).unwrap_err(),
        PrepareError::Attest(AttestError::Evidence(EvidenceError::SimUntrustedRoot(_)))
    ));
}

#[test]
fn tampered_sim_evidence_is_refused() {
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let client = PrepareClient::new(world.policy.clone(), seed("client nonce", 8));
    let (offer, _) = endpoint
        .respond(&world.manager_tee(), &client.challenge())
        .unwrap();
    let offer: serde_json::Value = serde_json::from_slice(&offer).unwrap();
    for field in ["binary", "measurement", "report_data", "signature"] {
        let mut tampered = offer.clone();
        let text = tampered["evidence"][field].as_str().unwrap().to_string();
        let flipped = if text.starts_with('0') { "1" } else { "0" };
        tampered["evidence"][field] = serde_json::Value::String(format!("{flipped}{}", &text[1..]));
        let error = client
            .verify_offer(&serde_json::to_vec(&tampered).unwrap(), NOW)
            .unwrap_err();
        assert!(
            matches!(
                error,
                PrepareError::Attest(AttestError::Evidence(
                    EvidenceError::SimBadSignature | EvidenceError::SimMeasurementMismatch
                ))
            ),
            "{field}: {error}"
        );
    }
    let mut unmarked = offer.clone();
    unmarked["evidence"]["simulated"] = serde_json::Value::Bool(false);
    assert!(matches!(
        client
            .verify_offer(&serde_json::to_vec(&unmarked).unwrap(), NOW)
            .unwrap_err(),
        PrepareError::Attest(AttestError::Evidence(EvidenceError::SimNotMarked))
    ));
}

#[test]
fn prepare_sealed_secret_only_opens_in_its_session() {
    let world = World::new();
    let endpoint = ManagerEndpoint::new(&seed("manager channel", 0));
    let client_a = PrepareClient::new(world.policy.clone(), seed("client nonce", 9));
    let client_b = PrepareClient::new(world.policy.clone(), seed("client nonce", 10));
    let (offer_a, session_a) = endpoint
        .respond(&world.manager_tee(), &client_a.challenge())
        .unwrap();
    let (_, session_b) = endpoint
        .respond(&world.manager_tee(), &client_b.challenge())
        .unwrap();
    let sealed = client_a
        .verify_offer(&offer_a, NOW)
        .unwrap()
        .seal_owner_secret(&world.secret, seed("entropy", 1))
        .unwrap();
    assert!(matches!(
        session_b.open(&endpoint, &sealed),
        Err(PrepareError::WrongNonce)
    ));
    let mut tampered: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    let text = tampered["sealed"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = if text.starts_with('0') { "1" } else { "0" };
    tampered["sealed"]["ciphertext"] =
        serde_json::Value::String(format!("{flipped}{}", &text[1..]));
    assert!(matches!(
        session_a.open(&endpoint, &serde_json::to_vec(&tampered).unwrap()),
        Err(PrepareError::Seal(_))
    ));
}

#[test]
fn key_distribution_provisions_a_worker() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let (request, pending) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        1,
    );
    assert!(pending.manager_claims().simulated);
    let (grant, issued) = distributor
        .enroll(&request, NOW, seed("entropy", 2))
        .unwrap();
    assert_eq!(issued.certificate.not_before_s, NOW);
    let provisioned = pending.accept(&grant, NOW).unwrap();
    assert_eq!(provisioned.metadata().id(), world.metadata.id());
    assert_eq!(
        provisioned.data_key().expose_secret(),
        world.secret.data_key(&world.metadata.id()).expose_secret()
    );
    assert_eq!(
        provisioned.certificate().measurement,
        issued
            .claims
            .measurement
            .certificate_digest(Some(&world.function))
    );
    assert!(provisioned.check_function(b"(module)").is_ok());
    assert!(provisioned.check_function(b"(module $other)").is_err());
    // The data key is not in the grant in the clear.
    let needle = hex::encode(provisioned.data_key().expose_secret());
    assert!(!String::from_utf8_lossy(&grant).contains(&needle));
    assert_eq!(distributor.issued().count(), 1);
}

#[test]
fn key_distribution_refuses_a_replayed_request() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let (request, _) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        2,
    );
    distributor
        .enroll(&request, NOW, seed("entropy", 3))
        .unwrap();
    // The same request again: its nonce was used.
    let refused = refusal(distributor.enroll(&request, NOW, seed("entropy", 4)));
    assert!(matches!(refused, Refusal::UnknownNonce), "{refused}");
    // Old evidence under a new, outstanding nonce: the binding fails.
    let mut replayed: serde_json::Value = serde_json::from_slice(&request).unwrap();
    distributor
        .challenge(&world.manager_tee(), seed("nonce", 99), NOW)
        .unwrap();
    replayed["nonce"] = serde_json::Value::String(hex::encode(seed("nonce", 99)));
    let refused = refusal(distributor.enroll(
        &serde_json::to_vec(&replayed).unwrap(),
        NOW,
        seed("entropy", 5),
    ));
    assert!(
        matches!(
            refused,
            Refusal::Attest(AttestError::Binding(BindingError::ReportDataMismatch))
        ),
        "{refused}"
    );
    assert_eq!(refused.class(), "stale-or-replayed");
}

#[test]
fn key_distribution_refuses_an_expired_nonce() {
    let world = World::new();
    let config = DistributorConfig {
        nonce_lifetime_s: 10,
        ..DistributorConfig::default()
    };
    let mut distributor = world.distributor(config);
    let (request, _) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        3,
    );
    let refused = refusal(distributor.enroll(&request, NOW + 11, seed("entropy", 6)));
    assert!(matches!(refused, Refusal::UnknownNonce));
}

#[test]
fn key_distribution_refuses_a_wrong_measurement() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let patched = SimTee::new(
        &world.root,
        psl_trust::BinaryIdentity::named("psl-worker", "patched"),
        Some(world.function),
    );
    let (request, _) = enroll_request(&world, &mut distributor, &patched, Some(world.function), 4);
    let refused = refusal(distributor.enroll(&request, NOW, seed("entropy", 7)));
    assert!(
        matches!(
            refused,
            Refusal::Attest(AttestError::Policy(
                PolicyError::MeasurementNotAllowed { .. }
            ))
        ),
        "{refused}"
    );
    assert_eq!(refused.class(), "wrong-measurement");
}

#[test]
fn key_distribution_refuses_a_function_not_in_the_policy() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let other = FunctionHash::of_module(b"(module $evil)");
    let tee = SimTee::new(&world.root, world.worker_binary, Some(other));
    let (request, _) = enroll_request(&world, &mut distributor, &tee, Some(other), 5);
    let refused = refusal(distributor.enroll(&request, NOW, seed("entropy", 8)));
    assert!(
        matches!(
            refused,
            Refusal::Attest(AttestError::Policy(PolicyError::FunctionNotAllowed(f))) if f == other
        ),
        "{refused}"
    );
    // A worker that claims the allowed function while its (simulated) measurement covers
    // another one.
    let (request, _) = enroll_request(&world, &mut distributor, &tee, Some(world.function), 6);
    let refused = refusal(distributor.enroll(&request, NOW, seed("entropy", 9)));
    assert!(matches!(
        refused,
        Refusal::Attest(AttestError::Binding(BindingError::FunctionMismatch { .. }))
    ));
    // No function at all under a pinning policy.
    let idle = SimTee::new(&world.root, world.worker_binary, None);
    let (request, _) = enroll_request(&world, &mut distributor, &idle, None, 7);
    let refused = refusal(distributor.enroll(&request, NOW, seed("entropy", 10)));
    assert!(matches!(
        refused,
        Refusal::Attest(AttestError::Policy(PolicyError::FunctionRequired))
    ));
}

#[test]
fn key_distribution_refuses_sim_under_a_strict_policy() {
    let mut world = World::new();
    world.policy.allow_sim = false;
    let mut distributor = world.distributor(DistributorConfig::default());
    let challenge = distributor
        .challenge(&world.manager_tee(), seed("nonce", 8), NOW)
        .unwrap();
    // The worker's own strict policy refuses the simulated manager.
    let worker = WorkerEnrollment::new(
        world.policy.clone(),
        None,
        &seed("worker channel", 8),
        &seed("writer", 8),
        Some(world.function),
    );
    assert!(matches!(
        worker
            .request(&world.worker_tee(), &challenge, NOW)
            .unwrap_err(),
        EnrollError::Manager(AttestError::Policy(PolicyError::SimulatedNotAllowed))
    ));
    // A worker that skips that check: the manager's strict policy refuses it.
    let mut lax = world.policy.clone();
    lax.allow_sim = true;
    let worker = WorkerEnrollment::new(
        lax,
        None,
        &seed("worker channel", 8),
        &seed("writer", 8),
        Some(world.function),
    );
    let (request, _) = worker
        .request(&world.worker_tee(), &challenge, NOW)
        .unwrap();
    let refused = refusal(distributor.enroll(&request, NOW, seed("entropy", 11)));
    assert!(
        matches!(
            refused,
            Refusal::Attest(AttestError::Policy(PolicyError::SimulatedNotAllowed))
        ),
        "{refused}"
    );
    assert_eq!(refused.class(), "simulated-not-allowed");
}

#[test]
fn key_distribution_refuses_tampered_evidence() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let (request, _) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        9,
    );
    let mut tampered: serde_json::Value = serde_json::from_slice(&request).unwrap();
    let text = tampered["evidence"]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = if text.ends_with('0') { "1" } else { "0" };
    tampered["evidence"]["signature"] =
        serde_json::Value::String(format!("{}{flipped}", &text[..text.len() - 1]));
    let refused = refusal(distributor.enroll(
        &serde_json::to_vec(&tampered).unwrap(),
        NOW,
        seed("entropy", 12),
    ));
    assert!(
        matches!(
            refused,
            Refusal::Attest(AttestError::Evidence(EvidenceError::SimBadSignature))
        ),
        "{refused}"
    );
    // Garbage, truncation and oversize: typed refusals, no panic.
    for bytes in [
        &b""[..],
        &b"{"[..],
        &b"null"[..],
        &request[..request.len() / 2],
        &vec![b' '; 400 * 1024][..],
    ] {
        assert!(matches!(
            refusal(distributor.enroll(bytes, NOW, seed("entropy", 13))),
            Refusal::Wire(_)
        ));
    }
}

#[test]
fn key_distribution_refuses_a_substituted_writer_key() {
    // An attacker swaps in its own writer key (to get it certified) under genuine evidence.
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let (request, _) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        10,
    );
    let mut tampered: serde_json::Value = serde_json::from_slice(&request).unwrap();
    let attacker = psl_capsule::WriterKeyPair::from_seed(&seed("attacker writer", 0));
    tampered["writer_key"] = serde_json::Value::String(hex::encode(attacker.public_key()));
    let refused = refusal(distributor.enroll(
        &serde_json::to_vec(&tampered).unwrap(),
        NOW,
        seed("entropy", 14),
    ));
    assert!(matches!(
        refused,
        Refusal::Attest(AttestError::Binding(BindingError::ReportDataMismatch))
    ));
}

#[test]
fn key_distribution_refuses_revoked_writers_and_re_enrollment() {
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let (request, pending) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        11,
    );
    let (grant, issued) = distributor
        .enroll(&request, NOW, seed("entropy", 15))
        .unwrap();
    pending.accept(&grant, NOW).unwrap();
    let writer = issued.certificate.writer;
    // The same writer key again (same seeds, fresh nonce): refused.
    let (request, _) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        11,
    );
    assert!(matches!(
        refusal(distributor.enroll(&request, NOW, seed("entropy", 16))),
        Refusal::AlreadyCertified(w) if w == writer
    ));
    let list = distributor.revoke(writer).unwrap();
    assert_eq!(list.writers, vec![writer]);
    list.check(&world.metadata).unwrap();
    assert_eq!(distributor.issued().count(), 0);
    let (request, _) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        11,
    );
    assert!(matches!(
        refusal(distributor.enroll(&request, NOW, seed("entropy", 17))),
        Refusal::Revoked(w) if w == writer
    ));
}

#[test]
fn worker_refuses_a_forged_grant() {
    // Anyone can HPKE-encrypt to the worker's public channel key; the worker accepts only a
    // grant sealed in Auth mode by the manager it attested.
    let world = World::new();
    let mut distributor = world.distributor(DistributorConfig::default());
    let (request, pending) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        12,
    );
    let (grant, _) = distributor
        .enroll(&request, NOW, seed("entropy", 18))
        .unwrap();
    let request_json: serde_json::Value = serde_json::from_slice(&request).unwrap();
    let mut worker_key = [0u8; 32];
    hex::decode_to_slice(
        request_json["channel_key"].as_str().unwrap(),
        &mut worker_key,
    )
    .unwrap();
    let mut forged: serde_json::Value = serde_json::from_slice(&grant).unwrap();
    let attacker = ManagerEndpoint::new(&seed("attacker", 1));
    let sealed = psl_trust::seal::seal(
        &worker_key,
        Some(attacker.channel()),
        b"PSL trust v1 capsule data key",
        b"",
        &[0x41; 32],
        seed("entropy", 19),
    )
    .unwrap();
    forged["data_key"] = serde_json::to_value(&sealed).unwrap();
    assert!(matches!(
        pending.accept(&serde_json::to_vec(&forged).unwrap(), NOW),
        Err(EnrollError::Seal(_))
    ));
}

#[test]
fn worker_refuses_an_expired_grant_and_another_capsule() {
    let world = World::new();
    let config = DistributorConfig {
        certificate_lifetime_s: 100,
        ..DistributorConfig::default()
    };
    let mut distributor = world.distributor(config);
    let (request, pending) = enroll_request(
        &world,
        &mut distributor,
        &world.worker_tee(),
        Some(world.function),
        13,
    );
    let (grant, _) = distributor
        .enroll(&request, NOW, seed("entropy", 20))
        .unwrap();
    assert!(matches!(
        pending.accept(&grant, NOW + 101),
        Err(EnrollError::Certificate(_))
    ));

    let mut distributor = world.distributor(DistributorConfig::default());
    let challenge = distributor
        .challenge(&world.manager_tee(), seed("nonce", 14), NOW)
        .unwrap();
    let worker = WorkerEnrollment::new(
        world.policy.clone(),
        Some(psl_capsule::CapsuleId([9; 32])),
        &seed("worker channel", 14),
        &seed("writer", 14),
        Some(world.function),
    );
    let (request, pending) = worker
        .request(&world.worker_tee(), &challenge, NOW)
        .unwrap();
    let (grant, _) = distributor
        .enroll(&request, NOW, seed("entropy", 21))
        .unwrap();
    assert!(matches!(
        pending.accept(&grant, NOW),
        Err(EnrollError::WrongCapsule { .. })
    ));
}

#[test]
fn sim_evidence_announces_itself() {
    let world = World::new();
    let tee = world.worker_tee();
    assert!(tee.is_simulated());
    assert!(tee.banner().starts_with("SIMULATED TEE"));
    let evidence = tee.evidence([0; 64]).unwrap();
    assert!(evidence.to_string().starts_with("SIMULATED TEE"));
    let json = String::from_utf8(evidence.encode()).unwrap();
    assert!(json.contains("\"simulated\":true"), "{json}");
    assert!(json.contains("SIMULATED TEE"), "{json}");
    assert!(Evidence::decode(json.as_bytes()).is_ok());
    let a = tee.sealing_key("cache").unwrap();
    let b = world.manager_tee().sealing_key("cache").unwrap();
    assert_ne!(a.expose_secret(), b.expose_secret());
    assert_ne!(
        a.expose_secret(),
        tee.sealing_key("other").unwrap().expose_secret()
    );
}

#[test]
fn policy_file_round_trips_and_refuses_bad_files() {
    let world = World::new();
    let json = world.policy.to_json();
    let parsed = psl_trust::Policy::from_json(json.as_bytes()).unwrap();
    assert_eq!(parsed, world.policy);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, &json).unwrap();
    assert_eq!(psl_trust::Policy::load(&path).unwrap(), world.policy);
    for bad in [
        &b"{}"[..],
        br#"{"version": 2}"#,
        br#"{"version": 1, "allow_sim": "yes"}"#,
        br#"{"version": 1, "unknown": 1}"#,
        br#"{"version": 1, "manager": {"measurements": ["sim:00"]}}"#,
        br#"{"version": 1, "manager": {"measurements": ["sgx2:00"]}}"#,
    ] {
        assert!(
            psl_trust::Policy::from_json(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(psl_trust::Policy::load(&dir.path().join("missing.json")).is_err());
}
