//! Seed derivation: the one place where a run's seed becomes the seed of each of its random
//! streams. Every stream is a function of the run's seed and its position only (epoch, item or
//! batch index), never of a counter carried across batches, so any stream can be replayed from
//! its position alone (a run resumed mid-epoch draws what the uninterrupted run drew) and at
//! any thread count.
//!
//! Both derivations go through SplitMix64's output function ([`mix64`], Steele, Lea & Flood
//! 2014): [`position_seed`] for the data loader's order, per-item draws and per-batch crops
//! (`CropDraw::PerBatch`, salted by the loader), [`stream_seed`] for
//! the training callbacks' per-batch streams (MixUp, CutMix), each from the seed of its stage
//! ([`stage_seed`]) in a multi-stage run. Their values are pinned by tests:
//! changing either changes every run's shuffles, augmentations or mixing.

/// SplitMix64's increment, `2⁶⁴/φ` rounded to odd.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// A second odd multiplier (xxHash's PRIME64_2) that keeps `epoch` and `position` apart.
const POSITION_MULTIPLIER: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// SplitMix64's output function: spreads nearby inputs over the whole 64-bit range (a
/// bijection; `mix64(0) = 0`).
pub fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One step of SplitMix64: `mix64(value + γ)`.
pub fn splitmix64(value: u64) -> u64 {
    mix64(value.wrapping_add(GOLDEN_GAMMA))
}

/// The seed of stage `stage` of a run seeded with `seed` (`seed + stage`, wrapping): what a
/// multi-stage run's stage draws its loaders' order and augmentations and its training
/// callbacks' streams from. Stage 0's seed is the run's; each stage's data epochs start at 0
/// again, and the stage index keeps two stages from replaying the same draws.
pub fn stage_seed(seed: u64, stage: usize) -> u64 {
    seed.wrapping_add(stage as u64)
}

/// The seed of the data loader's draw at `position` of `epoch` (a shuffle uses
/// `position = u64::MAX`; item `i`'s augmentation uses `i`).
pub fn position_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    mix64(seed ^ epoch.wrapping_mul(GOLDEN_GAMMA) ^ position.wrapping_mul(POSITION_MULTIPLIER))
}

/// The seed of a per-batch stream: stream `stream` (a constant per callback kind) of the run's
/// `seed`, at batch `batch` of data epoch `data_epoch`.
pub fn stream_seed(seed: u64, stream: u64, data_epoch: u64, batch: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ stream) ^ data_epoch) ^ batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_keep_their_values() {
        // Worked with Python integers masked to 64 bits from the formulas above.
        assert_eq!(position_seed(0, 0, 0), 0);
        assert_eq!(position_seed(42, 3, 17), 0x1b05_9760_0c31_0f54);
        assert_eq!(position_seed(42, 3, u64::MAX), 0x0f3b_d86c_358a_be30);
        assert_eq!(stream_seed(0, 0, 0, 0), 0x2382_75bc_38fc_be91);
        assert_eq!(stream_seed(42, 0x6d69_7875_7000_0001, 3, 17), 0xed39_8db4_f71d_35f6);
        assert_eq!(stage_seed(42, 0), 42);
        assert_eq!(stage_seed(42, 1), 43);
        assert_eq!(stage_seed(u64::MAX, 1), 0);
    }

    #[test]
    fn nearby_positions_get_distant_seeds() {
        let a = position_seed(7, 1, 10);
        assert_ne!(a, position_seed(7, 1, 11));
        assert_ne!(a, position_seed(7, 2, 10));
        assert_ne!(a, position_seed(8, 1, 10));
        assert!((a ^ position_seed(7, 1, 11)).count_ones() > 16);
        assert_ne!(stream_seed(7, 1, 2, 3), stream_seed(7, 1, 3, 2));
    }
}
