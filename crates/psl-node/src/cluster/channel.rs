//! Sealed request/reply envelopes between enclaves, over an untrusted bus.
//!
//! Lock names, lock requests and invocation inputs are application data: they must not cross
//! NATS in clear. Every message between enrolled parties (manager, workers, gateways) is
//! sealed with ChaCha20-Poly1305 under a key derived from the capsule's data key and the
//! sender's writer id:
//!
//! `key = BLAKE3-derive-key("psl channel v1", data key || capsule id || sender writer id)`
//!
//! Only parties that attested and received the data key can derive it; NATS can drop, delay
//! or replay messages, but cannot read or forge them. The envelope:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `PSLc` |
//! | 1 | version (1) |
//! | 1 | direction (0 request, 1 reply) |
//! | 16 | sender's writer id |
//! | 8 | counter (little endian; a request's number, repeated by its reply) |
//! | n + 16 | ciphertext and tag (the 30 header bytes and the capsule id are the AAD) |
//!
//! The nonce is the direction and the counter, so a sender never reuses one as long as it never
//! reuses a counter (it counts up from 1 per writer incarnation, and a new incarnation has a
//! new writer id, hence a new key). A reply is sealed under the requester's key with the
//! request's counter: it answers that request and no other. Receivers of requests refuse
//! replays with a [`ReplayWindow`] per sender.

use psl_capsule::{CapsuleId, DataKey, WriterId};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"PSLc";
const VERSION: u8 = 1;
/// Bytes of the envelope's header.
pub const HEADER_BYTES: usize = 30;
/// Bytes of the AEAD tag.
pub const TAG_BYTES: usize = 16;

/// Which way a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A request (its counter is the sender's).
    Request = 0,
    /// A reply (sealed under the requester's key, with the request's counter).
    Reply = 1,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// Too short, wrong magic or version, or the wrong direction.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The tag did not verify: forged, tampered, or sealed under another capsule's key.
    #[error("envelope did not authenticate")]
    Forged,
    /// A request counter seen before, or too old for the replay window.
    #[error("replayed request (counter {0})")]
    Replayed(u64),
}

/// An opened envelope.
#[derive(Debug)]
pub struct Opened {
    /// Who sealed it (the requester, for a reply).
    pub sender: WriterId,
    /// The request counter.
    pub counter: u64,
    /// The plaintext.
    pub payload: Vec<u8>,
}

/// Derives channel keys of one capsule.
pub struct ChannelKeys {
    data_key: Zeroizing<[u8; 32]>,
    capsule: CapsuleId,
}

impl std::fmt::Debug for ChannelKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelKeys")
            .field("capsule", &self.capsule)
            .finish_non_exhaustive()
    }
}

impl ChannelKeys {
    /// Keys of `capsule`, from its data key.
    pub fn new(data_key: &DataKey, capsule: CapsuleId) -> Self {
        ChannelKeys {
            data_key: Zeroizing::new(*data_key.expose_secret()),
            capsule,
        }
    }

    fn key(&self, sender: &WriterId) -> LessSafeKey {
        let mut material = Zeroizing::new([0u8; 32 + 32 + 16]);
        material[..32].copy_from_slice(&*self.data_key);
        material[32..64].copy_from_slice(&self.capsule.0);
        material[64..].copy_from_slice(&sender.0);
        let key = Zeroizing::new(blake3::derive_key("psl channel v1", &*material));
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &*key)
                .unwrap_or_else(|_| unreachable!("32-byte ChaCha20-Poly1305 key")),
        )
    }

    fn nonce(direction: Direction, counter: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[0] = direction as u8;
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_BYTES + 32);
        aad.extend_from_slice(header);
        aad.extend_from_slice(&self.capsule.0);
        aad
    }

    /// Seals `payload` from `sender` (for a reply: the requester) with `counter`.
    pub fn seal(
        &self,
        direction: Direction,
        sender: WriterId,
        counter: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + TAG_BYTES);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(direction as u8);
        out.extend_from_slice(&sender.0);
        out.extend_from_slice(&counter.to_le_bytes());
        let aad = self.aad(&out);
        let mut body = payload.to_vec();
        // Sealing in place with a valid key and nonce only fails for inputs over 256 GiB.
        if let Ok(tag) = self.key(&sender).seal_in_place_separate_tag(
            Self::nonce(direction, counter),
            Aad::from(&aad),
            &mut body,
        ) {
            out.extend_from_slice(&body);
            out.extend_from_slice(tag.as_ref());
        }
        out
    }

    /// Opens an envelope travelling in `direction`.
    pub fn open(&self, direction: Direction, bytes: &[u8]) -> Result<Opened, ChannelError> {
        if bytes.len() < HEADER_BYTES + TAG_BYTES {
            return Err(ChannelError::Malformed("too short"));
        }
        let (header, sealed) = bytes.split_at(HEADER_BYTES);
        if &header[..4] != MAGIC {
            return Err(ChannelError::Malformed("bad magic"));
        }
        if header[4] != VERSION {
            return Err(ChannelError::Malformed("unknown version"));
        }
        if header[5] != direction as u8 {
            return Err(ChannelError::Malformed("wrong direction"));
        }
        let mut sender = [0u8; 16];
        sender.copy_from_slice(&header[6..22]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&header[22..30]);
        let (sender, counter) = (WriterId(sender), u64::from_le_bytes(counter));
        let aad = self.aad(header);
        let mut body = sealed.to_vec();
        let plain = self
            .key(&sender)
            .open_in_place(Self::nonce(direction, counter), Aad::from(&aad), &mut body)
            .map_err(|_| ChannelError::Forged)?;
        let len = plain.len();
        body.truncate(len);
        Ok(Opened {
            sender,
            counter,
            payload: body,
        })
    }
}

/// Counters a [`ReplayWindow`] remembers below the highest one seen.
pub const REPLAY_WINDOW: u64 = 1024;

/// Refuses replayed request counters of one sender: the highest counter seen and which of the
/// [`REPLAY_WINDOW`] below it were seen (counters may arrive out of order within that window;
/// older ones are refused).
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    top: u64,
    /// Bit `c % REPLAY_WINDOW` is set when counter `c` (within the window) was seen.
    seen: Vec<u64>,
}

impl ReplayWindow {
    fn bit(&mut self, counter: u64) -> (&mut u64, u64) {
        if self.seen.is_empty() {
            self.seen = vec![0; (REPLAY_WINDOW / 64) as usize];
        }
        let slot = counter % REPLAY_WINDOW;
        (&mut self.seen[(slot / 64) as usize], 1 << (slot % 64))
    }

    /// Records `counter`; `false` if it was seen before or is below the window (0 is never
    /// valid).
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        if counter > self.top {
            // Forget the counters that leave the window (their slots are reused).
            let from = self
                .top
                .saturating_add(1)
                .max(counter.saturating_sub(REPLAY_WINDOW - 1));
            for old in from..counter {
                let (word, bit) = self.bit(old);
                *word &= !bit;
            }
            let (word, bit) = self.bit(counter);
            *word |= bit;
            self.top = counter;
            return true;
        }
        if self.top - counter >= REPLAY_WINDOW {
            return false;
        }
        let (word, bit) = self.bit(counter);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> ChannelKeys {
        ChannelKeys::new(&DataKey::from_bytes([seed; 32]), CapsuleId([7; 32]))
    }

    #[test]
    fn round_trip_and_binding() {
        let k = keys(1);
        let me = WriterId([3; 16]);
        let sealed = k.seal(Direction::Request, me, 5, b"lock secret-name");
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "plaintext leaked"
        );
        let opened = k.open(Direction::Request, &sealed).unwrap();
        assert_eq!(
            (opened.sender, opened.counter, opened.payload.as_slice()),
            (me, 5, &b"lock secret-name"[..])
        );
        // Wrong direction, other capsule key, any flipped bit: refused.
        assert!(k.open(Direction::Reply, &sealed).is_err());
        assert_eq!(
            keys(2).open(Direction::Request, &sealed).unwrap_err(),
            ChannelError::Forged
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                k.open(Direction::Request, &bad).is_err(),
                "bit flip at {i} accepted"
            );
        }
        // A reply carries the request's counter: it cannot answer another request.
        let reply = k.seal(Direction::Reply, me, 5, b"granted");
        let opened = k.open(Direction::Reply, &reply).unwrap();
        assert_eq!(opened.counter, 5);
        assert!(k.open(Direction::Reply, &reply[..20]).is_err());
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(w.accept(10));
        assert!(w.accept(3), "out of order within the window");
        assert!(!w.accept(3));
        assert!(w.accept(2000));
        assert!(!w.accept(10), "below the window");
        assert!(w.accept(1500));
        assert!(!w.accept(1500));
        assert!(w.accept(1024 + 3), "a reused slot is clear");
        // Against a model: every counter accepted once, within the window.
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::HashSet::new();
        let mut top = 0u64;
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = 1 + (x >> 33) % 5000;
            let expect = c + REPLAY_WINDOW > top && !seen.contains(&c);
            assert_eq!(w.accept(c), expect, "counter {c}, top {top}");
            if expect {
                seen.insert(c);
                top = top.max(c);
            }
        }
    }
}
