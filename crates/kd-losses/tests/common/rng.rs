//! The one deterministic pseudo-random generator of the kd-losses tests and benches: xorshift64
//! from a mixed seed, so that every run (and every machine) sees the same data. The benches
//! include this file with `#[path]`.
#![allow(dead_code)] // each test binary uses its own subset

/// xorshift64 state.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose stream depends only on `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Two independent 24-bit uniforms in `[0, 1)` from one draw (bits 40..64 and 16..40).
    fn two_uniforms(&mut self) -> (u64, u64) {
        let x = self.next_u64();
        (x >> 40, (x >> 16) & 0xFF_FFFF)
    }
}

/// 2^24, the resolution of one uniform.
const SCALE: f64 = (1u64 << 24) as f64;

/// `n` values uniform in `[−half_width, half_width)`.
pub fn uniform(n: usize, seed: u64, half_width: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (a, _) = rng.two_uniforms();
            (a as f32 / SCALE as f32 * 2.0 - 1.0) * half_width
        })
        .collect()
}

/// `n` bell-shaped values (the sum of two uniforms, a triangle) with standard deviation about
/// `std`, computed in `f32`.
pub fn bell(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (a, b) = rng.two_uniforms();
            let (a, b) = (a as f32 / SCALE as f32, b as f32 / SCALE as f32);
            (a + b - 1.0) * std * 2.45
        })
        .collect()
}

/// [`bell`] computed in `f64`.
pub fn bell_f64(n: usize, seed: u64, std: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (a, b) = rng.two_uniforms();
            (a as f64 / SCALE + b as f64 / SCALE - 1.0) * std * 2.45
        })
        .collect()
}
