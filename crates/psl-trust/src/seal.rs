//! HPKE (RFC 9180) sealing of secrets to enclave channel keys.
//!
//! Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, from the `hpke` crate.
//! Channel keys are static X25519 key pairs derived from caller-supplied seeds, and every
//! encapsulation draws its ephemeral key from caller-supplied entropy, so this module draws no
//! randomness itself (callers pass bytes from a CSPRNG; tests pass fixed bytes).
//!
//! A channel key's public half goes into the attestation binding (report data), so a peer that
//! verified the evidence knows only that enclave can open what it seals.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::limits::SEALED_SECRET_BYTES_MAX;

type Kem = X25519HkdfSha256;
type Aead = ChaCha20Poly1305;
type Kdf = HkdfSha256;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The peer's public key is not a valid X25519 key.
    #[error("invalid X25519 public key")]
    BadPublicKey,
    /// The encapsulated key is malformed.
    #[error("invalid encapsulated key")]
    BadEncapsulation,
    /// Authentication failed: wrong key, wrong sender, wrong context or tampered ciphertext.
    #[error("sealed secret does not open (wrong recipient or sender, other context, or tampered)")]
    Open,
    /// The plaintext is larger than allowed.
    #[error("sealed secret of {len} bytes exceeds {max}")]
    TooLarge {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The HPKE library refused to seal.
    #[error("HPKE seal failed: {0}")]
    Seal(String),
}

/// An enclave's static X25519 channel key pair (HPKE recipient, and sender in Auth mode).
pub struct ChannelKeyPair {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: [u8; 32],
}

impl ChannelKeyPair {
    /// Derives the key pair from 32 secret seed bytes (draw them from a CSPRNG at every start).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let (private, public) = Kem::derive_keypair(seed);
        let mut bytes = [0u8; 32];
        for (dst, src) in bytes.iter_mut().zip(public.to_bytes().iter()) {
            *dst = *src;
        }
        ChannelKeyPair {
            private,
            public: bytes,
        }
    }

    /// The public key that goes into the attestation binding.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn pair(
        &self,
    ) -> Result<
        (
            <Kem as hpke::Kem>::PrivateKey,
            <Kem as hpke::Kem>::PublicKey,
        ),
        SealError,
    > {
        Ok((self.private.clone(), parse_public(&self.public)?))
    }
}

impl std::fmt::Debug for ChannelKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelKeyPair(public {})", hex::encode(self.public))
    }
}

/// An HPKE-sealed secret: the encapsulated key and the ciphertext (plaintext + 16-byte tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The encapsulated (ephemeral) public key.
    #[serde(with = "crate::hexser::array")]
    pub enc: [u8; 32],
    /// The ciphertext.
    #[serde(with = "crate::hexser::vec")]
    pub ciphertext: Vec<u8>,
}

fn parse_public(bytes: &[u8; 32]) -> Result<<Kem as hpke::Kem>::PublicKey, SealError> {
    <Kem as hpke::Kem>::PublicKey::from_bytes(bytes).map_err(|_| SealError::BadPublicKey)
}

/// Seals `plaintext` to `recipient`. With `sender`, HPKE Auth mode: the recipient learns the
/// secret came from the holder of `sender`'s private key.
pub fn seal(
    recipient: &[u8; 32],
    sender: Option<&ChannelKeyPair>,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    entropy: [u8; 32],
) -> Result<Sealed, SealError> {
    if plaintext.len() > SEALED_SECRET_BYTES_MAX {
        return Err(SealError::TooLarge {
            len: plaintext.len(),
            max: SEALED_SECRET_BYTES_MAX,
        });
    }
    let recipient = parse_public(recipient)?;
    let mode = match sender {
        Some(sender) => OpModeS::Auth(sender.pair()?),
        None => OpModeS::Base,
    };
    let mut rng = SeedRng::new(entropy);
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<Aead, Kdf, Kem>(
        &mode, &recipient, info, plaintext, aad, &mut rng,
    )
    .map_err(|error| SealError::Seal(error.to_string()))?;
    let mut enc_bytes = [0u8; 32];
    for (dst, src) in enc_bytes.iter_mut().zip(enc.to_bytes().iter()) {
        *dst = *src;
    }
    Ok(Sealed {
        enc: enc_bytes,
        ciphertext,
    })
}

/// Opens a [`Sealed`] addressed to `recipient`. With `sender`, requires HPKE Auth mode from that
/// sender's key.
pub fn open(
    recipient: &ChannelKeyPair,
    sender: Option<&[u8; 32]>,
    info: &[u8],
    aad: &[u8],
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.ciphertext.len() > SEALED_SECRET_BYTES_MAX.saturating_add(16) {
        return Err(SealError::TooLarge {
            len: sealed.ciphertext.len(),
            max: SEALED_SECRET_BYTES_MAX.saturating_add(16),
        });
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
        .map_err(|_| SealError::BadEncapsulation)?;
    let mode = match sender {
        Some(sender) => OpModeR::Auth(parse_public(sender)?),
        None => OpModeR::Base,
    };
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &mode,
        &recipient.private,
        &enc,
        info,
        &sealed.ciphertext,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| SealError::Open)
}

/// A deterministic CSPRNG over caller-supplied entropy (BLAKE3 in XOF mode, keyed by the seed).
/// HPKE draws its ephemeral key from it, so the caller decides where randomness comes from.
pub(crate) struct SeedRng(blake3::OutputReader);

impl SeedRng {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        SeedRng(
            blake3::Hasher::new_keyed(&seed)
                .update(b"PSL trust v1 seed rng")
                .finalize_xof(),
        )
    }
}

impl TryRng for SeedRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.0.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.0.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for SeedRng {}
