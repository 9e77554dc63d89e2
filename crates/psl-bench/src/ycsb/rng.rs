//! The driver's own pseudo-random source (SplitMix64) and YCSB's 64-bit FNV hash.
//!
//! No `rand` crate: the driver needs one fast, seedable, reproducible stream per thread and
//! nothing else. SplitMix64 (Steele, Lea, Flood 2014) passes BigCrush and is a single add, two
//! multiplies and three shifts per draw.

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for thread `index` of a run seeded with `seed`.
    pub fn for_thread(seed: u64, index: u64) -> Self {
        let mut mixer = Self(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        Self(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform double in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, n)` (`n > 0`), by Lemire's multiply-shift (bias below 2^-64·n).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform integer in `[lo, hi]`.
    pub fn inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }
}

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a 64 over the 8 little-endian bytes of `value`, then the
/// absolute value of the result read as a signed 64-bit integer (as Java's `Math.abs` does;
/// like Java, `i64::MIN` stays `2^63`).
pub fn fnvhash64(value: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME_64);
    }
    (hash as i64).wrapping_abs() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_values() {
        // FNV-1a 64 of eight zero bytes (reference implementation), folded to |i64|.
        let mut h = FNV_OFFSET_BASIS_64;
        for _ in 0..8 {
            h = h.wrapping_mul(FNV_PRIME_64);
        }
        assert_eq!(fnvhash64(0), (h as i64).wrapping_abs() as u64);
        assert!(fnvhash64(12345) < 1 << 63);
        assert_ne!(fnvhash64(1), fnvhash64(2));
    }

    #[test]
    fn streams_are_reproducible_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let f = a.next_f64();
            b.next_f64();
            assert!((0.0..1.0).contains(&f));
            let v = a.inclusive(3, 9);
            b.inclusive(3, 9);
            assert!((3..=9).contains(&v));
        }
        assert_ne!(
            SplitMix64::for_thread(1, 0).next_u64(),
            SplitMix64::for_thread(1, 1).next_u64()
        );
    }
}
