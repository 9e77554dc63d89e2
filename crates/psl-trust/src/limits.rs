//! Every size limit of the trust layer, with its unit. Untrusted input is checked against one of
//! these before it is parsed or allocated.

/// Largest encoded evidence accepted (bytes). DCAP evidence carries its collateral (about 15 KiB
/// in the samples; PCK chains and CRLs can grow), so this leaves room.
pub const EVIDENCE_BYTES_MAX: usize = 256 * 1024;
/// Largest protocol message accepted (bytes): evidence plus keys and certificates.
pub const MESSAGE_BYTES_MAX: usize = 320 * 1024;
/// Largest policy file accepted (bytes).
pub const POLICY_BYTES_MAX: usize = 1024 * 1024;
/// Most entries in any list of a policy (measurements, functions, statuses, roots).
pub const POLICY_LIST_MAX: usize = 4096;
/// Largest raw hardware report or quote (bytes). SNP reports are 1184 bytes; DCAP quotes with an
/// embedded PCK chain are a few KiB.
pub const QUOTE_BYTES_MAX: usize = 64 * 1024;
/// Largest VCEK certificate (DER bytes).
pub const CERTIFICATE_DER_BYTES_MAX: usize = 8 * 1024;
/// Largest file read from configfs-tsm or `/dev/attestation` (bytes).
pub const COLLECTOR_FILE_BYTES_MAX: usize = 128 * 1024;
/// Largest HPKE-sealed secret (bytes of plaintext).
pub const SEALED_SECRET_BYTES_MAX: usize = 4096;
/// Default number of outstanding enrollment nonces a key distributor remembers.
pub const OUTSTANDING_NONCES_DEFAULT: usize = 4096;
/// Default number of revoked writers a key distributor keeps.
pub const REVOKED_WRITERS_MAX_DEFAULT: usize = 65_536;
