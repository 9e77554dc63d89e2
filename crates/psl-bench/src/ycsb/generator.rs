//! YCSB's number generators, written from their published definitions.
//!
//! * [`Zipfian`]: Gray et al., "Quickly generating billion-record synthetic databases"
//!   (SIGMOD 1994), with YCSB's constant 0.99 and YCSB's incremental zeta when the item count
//!   grows between draws.
//! * [`ScrambledZipfian`]: a zipfian draw over a fixed space of 10^10 items, hashed with
//!   [`fnvhash64`] and reduced modulo the item count, so the popular items are spread over the
//!   key space instead of clustered at its start (YCSB's `requestdistribution=zipfian`).
//! * [`SkewedLatest`]: zipfian offset back from the newest acknowledged insert.
//! * [`Hotspot`]: a fraction of the operations on a fraction of the items.
//! * [`InsertSequence`]: YCSB's acknowledged counter: the newest key readers may choose is the
//!   highest one below which every insert has completed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::rng::{SplitMix64, fnvhash64};

/// YCSB's `ZipfianGenerator.ZIPFIAN_CONSTANT`.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// The item space of YCSB's scrambled zipfian (`ScrambledZipfianGenerator.ITEM_COUNT`).
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// zeta(10^10, 0.99), precomputed as in YCSB (`ScrambledZipfianGenerator.ZETAN`); computing it
/// takes 10^10 powers.
pub const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// `initial + sum_{i=from}^{to-1} 1/(i+1)^theta`: the zeta sum continued from `from` items to
/// `to` items.
pub fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    let mut sum = initial;
    for i in from..to {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    sum
}

/// The Gray et al. zipfian generator over `[base, base + items)`: item `base` is the most
/// popular, `base + 1` the next, and so on.
#[derive(Clone, Debug)]
pub struct Zipfian {
    base: u64,
    /// Item count the constructor was given (YCSB keeps using it in `eta`, see [`Self::next_for`]).
    items: u64,
    theta: f64,
    zeta2theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    count_for_zeta: u64,
}

impl Zipfian {
    /// Items `min..=max` with the YCSB constant; computes zeta(n) (n powers).
    pub fn new(min: u64, max: u64) -> Self {
        let items = max - min + 1;
        Self::with_zetan(
            min,
            max,
            ZIPFIAN_CONSTANT,
            zeta(0, items, ZIPFIAN_CONSTANT, 0.0),
        )
    }

    /// Items `min..=max` with exponent `theta` and a precomputed `zetan` for that many items.
    pub fn with_zetan(min: u64, max: u64, theta: f64, zetan: f64) -> Self {
        let items = max - min + 1;
        let zeta2theta = zeta(0, 2, theta, 0.0);
        Self {
            base: min,
            items,
            theta,
            zeta2theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: Self::eta(items, theta, zeta2theta, zetan),
            count_for_zeta: items,
        }
    }

    fn eta(items: u64, theta: f64, zeta2theta: f64, zetan: f64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan)
    }

    /// Items the generator was built for.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// A draw over the constructor's item count.
    pub fn next(&mut self, rng: &mut SplitMix64) -> u64 {
        self.next_for(rng, self.items)
    }

    /// A draw over `item_count` items (YCSB `nextLong(itemcount)`). When the count grew since
    /// the last draw, zeta is extended incrementally from the old count (O(growth)); when it
    /// shrank, it is recomputed. As in YCSB, `eta` keeps the constructor's item count.
    pub fn next_for(&mut self, rng: &mut SplitMix64, item_count: u64) -> u64 {
        if item_count != self.count_for_zeta {
            self.zetan = if item_count > self.count_for_zeta {
                zeta(self.count_for_zeta, item_count, self.theta, self.zetan)
            } else {
                zeta(0, item_count, self.theta, 0.0)
            };
            self.count_for_zeta = item_count;
            self.eta = Self::eta(self.items, self.theta, self.zeta2theta, self.zetan);
        }
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return self.base;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return self.base + 1;
        }
        let offset = (item_count as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        self.base + offset
    }
}

/// YCSB's scrambled zipfian over `[min, max]`.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    min: u64,
    item_count: u64,
    zipfian: Zipfian,
}

impl ScrambledZipfian {
    /// Items `min..=max`; the underlying zipfian always spans [`SCRAMBLED_ITEM_COUNT`] items.
    pub fn new(min: u64, max: u64) -> Self {
        Self {
            min,
            item_count: max - min + 1,
            zipfian: Zipfian::with_zetan(
                0,
                SCRAMBLED_ITEM_COUNT,
                ZIPFIAN_CONSTANT,
                SCRAMBLED_ZETAN,
            ),
        }
    }

    /// The next item in `[min, max]`.
    pub fn next(&mut self, rng: &mut SplitMix64) -> u64 {
        self.min + fnvhash64(self.zipfian.next(rng)) % self.item_count
    }
}

/// YCSB's skewed-latest generator: `latest - zipfian(latest)`.
#[derive(Clone, Debug)]
pub struct SkewedLatest {
    zipfian: Zipfian,
}

impl SkewedLatest {
    /// For a store whose newest ordinal is `latest` now (YCSB builds the zipfian over
    /// `lastValue` items).
    pub fn new(latest: u64) -> Self {
        let items = latest.max(1);
        Self {
            zipfian: Zipfian::new(0, items - 1),
        }
    }

    /// A draw favouring ordinals just below `latest` (the newest acknowledged one).
    pub fn next(&mut self, rng: &mut SplitMix64, latest: u64) -> u64 {
        let offset = self.zipfian.next_for(rng, latest.max(1));
        latest.saturating_sub(offset)
    }
}

/// YCSB's hotspot generator over `[lower, upper]`: `op_fraction` of the draws fall uniformly in
/// the first `data_fraction` of the interval, the rest uniformly in the remainder.
#[derive(Clone, Debug)]
pub struct Hotspot {
    lower: u64,
    hot: u64,
    cold: u64,
    op_fraction: f64,
}

impl Hotspot {
    /// The generator; fractions are clamped to `[0, 1]`.
    pub fn new(lower: u64, upper: u64, data_fraction: f64, op_fraction: f64) -> Self {
        let interval = upper - lower + 1;
        let hot = (interval as f64 * data_fraction.clamp(0.0, 1.0)) as u64;
        Self {
            lower,
            hot,
            cold: interval - hot,
            op_fraction: op_fraction.clamp(0.0, 1.0),
        }
    }

    /// The next item.
    pub fn next(&mut self, rng: &mut SplitMix64) -> u64 {
        let hot_draw = rng.next_f64() < self.op_fraction;
        if (hot_draw && self.hot > 0) || self.cold == 0 {
            self.lower + rng.below(self.hot)
        } else {
            self.lower + self.hot + rng.below(self.cold)
        }
    }
}

/// YCSB's `AcknowledgedCounterGenerator`, shared by the threads of one run: inserts take the
/// next ordinal, and [`Self::last`] is the highest ordinal below which every insert completed.
#[derive(Debug)]
pub struct InsertSequence {
    next: AtomicU64,
    last: AtomicU64,
    /// (the lowest ordinal not yet acknowledged, ordinals acknowledged above it)
    window: Mutex<(u64, BTreeSet<u64>)>,
}

impl InsertSequence {
    /// After a load of `start` records (ordinals `0..start`; `start >= 1`).
    pub fn new(start: u64) -> Self {
        Self {
            next: AtomicU64::new(start),
            last: AtomicU64::new(start.saturating_sub(1)),
            window: Mutex::new((start, BTreeSet::new())),
        }
    }

    /// The ordinal for the next insert.
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the insert of `ordinal` complete.
    pub fn acknowledge(&self, ordinal: u64) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (limit, pending) = &mut *window;
        pending.insert(ordinal);
        let before = *limit;
        while pending.remove(limit) {
            *limit += 1;
        }
        if *limit != before {
            self.last.store(*limit - 1, Ordering::Release);
        }
    }

    /// The newest ordinal readers may choose.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_matches_the_zipf_law_for_small_n() {
        // Gray et al. is exact for ranks 0 and 1 and an approximation beyond; the bounds below
        // are those of the law for n = 10 with a loose tolerance on the approximated tail.
        let n = 10u64;
        let draws = 200_000u64;
        let mut zipf = Zipfian::new(0, n - 1);
        let mut rng = SplitMix64::new(42);
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let v = zipf.next(&mut rng);
            assert!(v <= n, "draw {v} outside 0..={n}");
            counts[v as usize] += 1;
        }
        let zetan = zeta(0, n, ZIPFIAN_CONSTANT, 0.0);
        let expected = |i: usize| draws as f64 / ((i + 1) as f64).powf(ZIPFIAN_CONSTANT) / zetan;
        // Ranks 0 and 1: exact in the algorithm, so a chi-square-like bound (4 sigma).
        for (i, &count) in counts.iter().enumerate().take(2) {
            let e = expected(i);
            let dev = (count as f64 - e).abs();
            assert!(dev < 4.0 * e.sqrt(), "rank {i}: {count} vs {e:.0}");
        }
        // Rank 0 is the most frequent, and frequency falls with rank over the head.
        assert!(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > counts[4]);
        // The tail (ranks 2..n) holds its expected mass within 5%.
        let tail: u64 = counts[2..].iter().sum();
        let tail_expected: f64 = (2..n as usize).map(expected).sum();
        assert!(
            (tail as f64 / tail_expected - 1.0).abs() < 0.05,
            "tail {tail} vs {tail_expected:.0}"
        );
        // Chi-square over all ranks against the exact law: the approximation makes it grow
        // with the number of draws (about 0.0015 per draw here, 300 at 200k draws, where
        // sampling noise alone would give about 9), so bound it per draw; a wrong generator
        // (e.g. uniform, or theta 0.5) is far above this bound.
        let chi2: f64 = (0..n as usize)
            .map(|i| {
                let e = expected(i);
                (counts[i] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(
            chi2 / (draws as f64) < 0.005,
            "chi2 {chi2}, counts {counts:?}"
        );
    }

    #[test]
    fn zipfian_incremental_zeta_equals_direct() {
        let mut rng = SplitMix64::new(1);
        let mut grown = Zipfian::new(0, 999);
        grown.next_for(&mut rng, 1500);
        let direct = zeta(0, 1500, ZIPFIAN_CONSTANT, 0.0);
        assert!((grown.zetan - direct).abs() < 1e-9);
        grown.next_for(&mut rng, 1200);
        assert!((grown.zetan - zeta(0, 1200, ZIPFIAN_CONSTANT, 0.0)).abs() < 1e-9);
    }

    #[test]
    fn scrambled_zipfian_is_in_range_deterministic_and_skewed() {
        let draw = |seed| {
            let mut g = ScrambledZipfian::new(100, 1099);
            let mut rng = SplitMix64::new(seed);
            (0..50_000).map(|_| g.next(&mut rng)).collect::<Vec<_>>()
        };
        let a = draw(9);
        assert_eq!(a, draw(9));
        assert_ne!(a, draw(10));
        assert!(a.iter().all(|v| (100..1100).contains(v)));
        let mut counts = vec![0u32; 1000];
        for v in &a {
            counts[(*v - 100) as usize] += 1;
        }
        counts.sort_unstable_by(|x, y| y.cmp(x));
        // Skewed: the hottest 1% of items take far more than 1% of the draws...
        let top: u32 = counts[..10].iter().sum();
        assert!(top > 50_000 / 10, "top 10 items got {top}");
        // ...and the hottest item is not item `min` by construction (it is hashed).
        assert!(counts[0] > 1000);
    }

    #[test]
    fn latest_favours_recent_ordinals() {
        let mut g = SkewedLatest::new(9_999);
        let mut rng = SplitMix64::new(3);
        let draws: Vec<u64> = (0..100_000).map(|_| g.next(&mut rng, 9_999)).collect();
        assert!(draws.iter().all(|v| *v <= 9_999));
        let newest = draws.iter().filter(|v| **v == 9_999).count();
        let recent = draws.iter().filter(|v| **v >= 9_900).count();
        let oldest_half = draws.iter().filter(|v| **v < 5_000).count();
        assert!(newest > 8_000, "newest drawn {newest} times");
        assert!(recent > 40_000, "top 1% drawn {recent} times");
        assert!(
            oldest_half < 10_000,
            "oldest half drawn {oldest_half} times"
        );
        // After more inserts the head moves with them.
        let moved = (0..10_000)
            .filter(|_| g.next(&mut rng, 20_000) >= 19_900)
            .count();
        assert!(moved > 4_000);
    }

    #[test]
    fn hotspot_splits_as_configured() {
        let mut g = Hotspot::new(0, 999, 0.2, 0.8);
        let mut rng = SplitMix64::new(5);
        let hot = (0..100_000).filter(|_| g.next(&mut rng) < 200).count();
        assert!((hot as f64 / 100_000.0 - 0.8).abs() < 0.01);
    }

    #[test]
    fn insert_sequence_acknowledges_contiguously() {
        let s = InsertSequence::new(10);
        assert_eq!(s.last(), 9);
        let (a, b) = (s.next(), s.next());
        assert_eq!((a, b), (10, 11));
        s.acknowledge(b);
        assert_eq!(s.last(), 9, "11 done but 10 still pending");
        s.acknowledge(a);
        assert_eq!(s.last(), 11);
    }
}
