//! A branch-free `exp` for `f32` that compilers vectorise, and the run-time choice of the widest
//! instruction set for the row kernels.
//!
//! `exp` is the Cephes single-precision algorithm: `x = n·ln 2 + r` with a two-constant
//! (Cody–Waite) split of `ln 2`, a degree-6 polynomial for `e^r` on `|r| ≤ ln 2 / 2`, and `2^n`
//! built in the exponent bits. Inputs are clamped to `[−87.3, 88]`, so the result is always a
//! normal float (`e^−87.3 ≈ 1.2e−38` stands for any smaller value, `e^88` for any larger one). Maximum error ≈ 1 ulp on
//! the kernels' range (`x ≤ 0`).

/// `e^x` (see the module docs).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n in the exponent bits, n ∈ [−126, 127] after the clamp. Adding 2^23 puts the integer
    // n + 127 ∈ [1, 255] in the low mantissa bits; the shift moves it into the exponent and
    // drops the rest. No float→int cast, so the loop vectorises.
    let bits = (n + (127.0 + 8_388_608.0)).to_bits() << 23;
    y * f32::from_bits(bits)
}

/// Instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the build's baseline target allows (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// x86-64 with AVX2 and FMA, detected at run time.
    Avx2Fma,
}

/// The best instruction set of this machine (cached after the first call).
pub fn detect() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std_on_the_kernel_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert!(exp(-1e4) > 0.0 && exp(-1e4) < 2e-38);
        assert_eq!(exp(0.0), 1.0);
    }
}
