//! Vectors of `f32` lanes for the row kernels: one small trait, a portable implementation, an
//! AVX2+FMA one (8 lanes) and an AVX-512 one (16 lanes), the widest the CPU has chosen at run
//! time, and the vector `exp` and `ln` the kernels need.
//!
//! `exp` is the Cephes single-precision algorithm: `x = n·ln 2 + r` with a two-constant
//! (Cody–Waite) split of `ln 2`, a degree-6 polynomial for `e^r` on `|r| ≤ ln 2 / 2`, and `2^n`
//! built in the exponent bits. Inputs are clamped to `[−87.3, 88]`, so the result is always a
//! normal float (`e^−87.3 ≈ 1.2e−38` stands for any smaller value). Maximum error ≈ 1 ulp.
//!
//! `ln` is Cephes `logf`: `x = 2^e · m` with `m ∈ [√½, √2)`, a degree-8 polynomial in `m − 1`,
//! and `e·ln 2` added in two parts. Inputs are clamped below to the smallest normal float.
//! Relative error ≈ 1e−7.
//!
//! The kernels are written once, generic over a small `Lanes` trait, and compiled once per instruction set:
//! every trait method is `#[inline(always)]`, so inside a `#[target_feature]` function the whole
//! kernel becomes straight AVX2 code. Closures do not inherit `#[target_feature]`: a closure in
//! a kernel body that handles lane values must itself be `#[inline(always)]` (as the closures
//! passed to the kernels' `pass` are), or a named `#[inline(always)]` function. Otherwise it is
//! compiled for the baseline target, every intrinsic becomes a call, and the kernel runs about
//! ten times slower (measured). `objdump -dC` on a bench binary should list no
//! `kd_losses::fused::…::{{closure}}` symbols besides rayon's per-row ones.

/// Instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the build's baseline target allows (SSE2 on x86-64, NEON on aarch64); the
    /// compiler vectorises the lane loops of its plain arrays.
    Portable,
    /// x86-64 with AVX2 and FMA, detected at run time (8 lanes of `__m256`).
    Avx2Fma,
    /// x86-64 with AVX-512 F (16 lanes of `__m512`), detected at run time.
    Avx512,
}

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512];

    /// Whether this machine can run kernels compiled for `self` (checked at run time).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The name used by `KD_FUSED_ISA` and the benches: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// Every instruction set this machine supports, narrowest first (the kernel tests run each).
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|isa| isa.is_supported()).collect()
}

/// The instruction set the kernels run on: the widest one this machine supports, unless
/// [`set_isa`] or the environment variable `KD_FUSED_ISA` (`portable`, `avx2`, `avx512`; read
/// once) asked for a narrower one. A request the machine cannot run is ignored.
pub fn detect() -> Isa {
    use std::sync::OnceLock;
    use std::sync::atomic::Ordering;
    static DEFAULT: OnceLock<Isa> = OnceLock::new();
    let chosen = OVERRIDE.load(Ordering::Relaxed);
    if let Some(isa) = Isa::ALL.get(chosen as usize).filter(|isa| isa.is_supported()) {
        return *isa;
    }
    *DEFAULT.get_or_init(|| {
        let widest = *available().last().expect("portable is always available");
        let asked = std::env::var("KD_FUSED_ISA").ok();
        match Isa::ALL.into_iter().find(|isa| Some(isa.name()) == asked.as_deref()) {
            Some(isa) if isa.is_supported() => isa,
            _ => widest,
        }
    })
}

/// Index into [`Isa::ALL`] set by [`set_isa`] (`u8::MAX`: none).
static OVERRIDE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Makes every later kernel call of the process run on `isa` (`None`: back to [`detect`]'s
/// default), for benches that compare instruction sets in one run. Returns `false`, changing
/// nothing, when this machine cannot run `isa`.
pub fn set_isa(isa: Option<Isa>) -> bool {
    use std::sync::atomic::Ordering;
    match isa {
        Some(isa) if !isa.is_supported() => false,
        Some(isa) => {
            let index = Isa::ALL.iter().position(|i| *i == isa).expect("listed") as u8;
            OVERRIDE.store(index, Ordering::Relaxed);
            true
        }
        None => {
            OVERRIDE.store(u8::MAX, Ordering::Relaxed);
            true
        }
    }
}

/// A vector of `f32` lanes.
///
/// # Safety
/// Implementations may use instructions the build's baseline target lacks; values of such a type
/// must only be created inside functions compiled for those instructions, which are entered only
/// after run-time detection ([`detect`]).
pub(crate) unsafe trait Lanes: Copy {
    /// Number of lanes.
    const N: usize;
    /// Loads `N` floats from the start of `x` (`x.len() ≥ N`).
    fn load(x: &[f32]) -> Self;
    /// Stores the lanes into the start of `out` (`out.len() ≥ N`).
    fn store(self, out: &mut [f32]);
    /// Stores the lanes into the start of `out` past the caches (a non-temporal store where
    /// the instruction set has one: the line is not read from memory first). `out` must start
    /// at a multiple of `4·N` bytes (`out.len() ≥ N`); [`Lanes::fence`] orders these stores
    /// before later ones.
    fn store_stream(self, out: &mut [f32]);
    /// Makes earlier [`Lanes::store_stream`] stores visible before any later store.
    fn fence();
    /// Every lane set to `x`.
    fn splat(x: f32) -> Self;
    /// Lane-wise `self + o`.
    fn add(self, o: Self) -> Self;
    /// Lane-wise `self − o`.
    fn sub(self, o: Self) -> Self;
    /// Lane-wise `self · o`.
    fn mul(self, o: Self) -> Self;
    /// Lane-wise `self · b + c` (fused where the instruction set has it).
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// Lane-wise maximum.
    fn max(self, o: Self) -> Self;
    /// Lane-wise minimum.
    fn min(self, o: Self) -> Self;
    /// Lane-wise round towards −∞.
    fn floor(self) -> Self;
    /// `2^n` for integer-valued lanes `n ∈ [−126, 127]`.
    fn pow2i(n: Self) -> Self;
    /// `(e, m)` with `self = 2^e · m`, `m ∈ [½, 1)`, for positive normal lanes.
    fn frexp(self) -> (Self, Self);
    /// Lane-wise `if self < o { a } else { b }`.
    fn select_lt(self, o: Self, a: Self, b: Self) -> Self;
    /// Lanes `≥ n` set to zero.
    fn keep_first(self, n: usize) -> Self;
    /// Sum of the lanes.
    fn sum(self) -> f32;
    /// Maximum of the lanes.
    fn hmax(self) -> f32;
}

/// `e^x` lane-wise (see the module docs).
#[inline(always)]
pub(crate) fn exp<V: Lanes>(x: V) -> V {
    let x = x.max(V::splat(-87.336_55)).min(V::splat(88.0));
    let n = x.mul_add(V::splat(std::f32::consts::LOG2_E), V::splat(0.5)).floor();
    // r = x − n·ln 2, with ln 2 split in two so the product is exact.
    let r = n.mul_add(V::splat(-0.693_359_4), x);
    let r = n.mul_add(V::splat(2.121_944_4e-4), r);
    let mut p = V::splat(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = p.mul_add(r, V::splat(c));
    }
    let y = p.mul_add(r.mul(r), r.add(V::splat(1.0)));
    y.mul(V::pow2i(n))
}

/// `ln x` lane-wise for `x > 0` (see the module docs).
#[inline(always)]
pub(crate) fn ln<V: Lanes>(x: V) -> V {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let (e, m) = x.max(V::splat(f32::MIN_POSITIVE)).frexp();
    // m ∈ [½, 1): below √½ use 2m − 1 and e − 1, else m − 1, so the argument is in [√½ − 1, √2 − 1).
    let one = V::splat(1.0);
    let e = m.select_lt(V::splat(SQRT_HALF), e.sub(one), e);
    let f = m.select_lt(V::splat(SQRT_HALF), m.add(m).sub(one), m.sub(one));
    let z = f.mul(f);
    let mut p = V::splat(7.037_683_6e-2);
    for c in [
        -1.151_461_e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_5e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        p = p.mul_add(f, V::splat(c));
    }
    let y = p.mul(f).mul(z);
    let y = e.mul_add(V::splat(-2.121_944_4e-4), y);
    let y = z.mul_add(V::splat(-0.5), y);
    let r = f.add(y);
    e.mul_add(V::splat(0.693_359_4), r)
}

/// Eight lanes in a plain array; the compiler vectorises the loops for the baseline target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable([f32; 8]);

impl Portable {
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        Self(self.0.map(f))
    }
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut out = self.0;
        for (a, b) in out.iter_mut().zip(o.0) {
            *a = f(*a, b);
        }
        Self(out)
    }
}

// SAFETY: only baseline instructions.
unsafe impl Lanes for Portable {
    const N: usize = 8;
    #[inline(always)]
    fn load(x: &[f32]) -> Self {
        Self(x[..8].try_into().expect("8 lanes"))
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        out[..8].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn store_stream(self, out: &mut [f32]) {
        self.store(out);
    }
    #[inline(always)]
    fn fence() {}
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Self([x; 8])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.zip(o, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.zip(o, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.zip(o, |a, b| a * b)
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        self.mul(b).add(c)
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        self.zip(o, f32::max)
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        self.zip(o, f32::min)
    }
    #[inline(always)]
    fn floor(self) -> Self {
        self.map(f32::floor)
    }
    #[inline(always)]
    fn pow2i(n: Self) -> Self {
        // Adding 2^23 puts the integer n + 127 ∈ [1, 254] in the low mantissa bits; the shift
        // moves it into the exponent field and drops the rest.
        n.map(|n| f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23))
    }
    #[inline(always)]
    fn frexp(self) -> (Self, Self) {
        let e = self.map(|x| ((x.to_bits() >> 23) & 0xff) as f32 - 126.0);
        let m = self.map(|x| f32::from_bits((x.to_bits() & 0x807f_ffff) | 0x3f00_0000));
        (e, m)
    }
    #[inline(always)]
    fn select_lt(self, o: Self, a: Self, b: Self) -> Self {
        let mut out = b.0;
        for (((r, x), y), v) in out.iter_mut().zip(self.0).zip(o.0).zip(a.0) {
            if x < y {
                *r = v;
            }
        }
        Self(out)
    }
    #[inline(always)]
    fn keep_first(self, n: usize) -> Self {
        let mut out = self.0;
        out.iter_mut().skip(n).for_each(|x| *x = 0.0);
        Self(out)
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        // Pairwise, as the vector versions do.
        let a = self.0;
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
    #[inline(always)]
    fn hmax(self) -> f32 {
        self.0.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Lanes;

    /// Eight lanes in one `__m256`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    // SAFETY: values of `Avx2` exist only inside `#[target_feature(enable = "avx2,fma")]`
    // kernels, entered after `is_x86_feature_detected!` confirmed both (see `detect`). Every
    // intrinsic below is sound under that invariant; loads and stores check their lengths.
    unsafe impl Lanes for Avx2 {
        const N: usize = 8;
        #[inline(always)]
        fn load(x: &[f32]) -> Self {
            assert!(x.len() >= 8);
            Self(unsafe { _mm256_loadu_ps(x.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, out: &mut [f32]) {
            assert!(out.len() >= 8);
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_stream(self, out: &mut [f32]) {
            assert!(out.len() >= 8 && (out.as_ptr() as usize).is_multiple_of(32));
            unsafe { _mm256_stream_ps(out.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn fence() {
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            Self(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Self(unsafe { _mm256_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Self(unsafe { _mm256_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Self(unsafe { _mm256_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Self(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            Self(unsafe { _mm256_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            Self(unsafe { _mm256_min_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn floor(self) -> Self {
            Self(unsafe { _mm256_floor_ps(self.0) })
        }
        #[inline(always)]
        fn pow2i(n: Self) -> Self {
            unsafe {
                let i = _mm256_cvtps_epi32(n.0);
                let biased = _mm256_add_epi32(i, _mm256_set1_epi32(127));
                Self(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
            }
        }
        #[inline(always)]
        fn frexp(self) -> (Self, Self) {
            unsafe {
                let bits = _mm256_castps_si256(self.0);
                let exp = _mm256_srli_epi32::<23>(bits);
                let e = _mm256_sub_ps(_mm256_cvtepi32_ps(exp), _mm256_set1_ps(126.0));
                let mant = _mm256_and_si256(bits, _mm256_set1_epi32(0x807f_ffff_u32 as i32));
                let m = _mm256_or_si256(mant, _mm256_set1_epi32(0x3f00_0000));
                (Self(e), Self(_mm256_castsi256_ps(m)))
            }
        }
        #[inline(always)]
        fn select_lt(self, o: Self, a: Self, b: Self) -> Self {
            unsafe {
                let m = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0);
                Self(_mm256_blendv_ps(b.0, a.0, m))
            }
        }
        #[inline(always)]
        fn keep_first(self, n: usize) -> Self {
            let mut keep = [0i32; 8];
            keep.iter_mut().take(n).for_each(|k| *k = -1);
            unsafe {
                let m = _mm256_loadu_si256(keep.as_ptr().cast());
                Self(_mm256_and_ps(self.0, _mm256_castsi256_ps(m)))
            }
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            unsafe {
                let hi = _mm256_extractf128_ps::<1>(self.0);
                let s = _mm_add_ps(_mm256_castps256_ps128(self.0), hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn hmax(self) -> f32 {
            let mut a = [0f32; 8];
            self.store(&mut a);
            a.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x))
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Lanes;

    /// Sixteen lanes in one `__m512`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    // SAFETY: values of `Avx512` exist only inside `#[target_feature(enable = "avx512f")]`
    // kernels, entered after `is_x86_feature_detected!("avx512f")` (see `detect`). Every
    // intrinsic below is AVX-512 F and sound under that invariant; loads and stores check their
    // lengths.
    unsafe impl Lanes for Avx512 {
        const N: usize = 16;
        #[inline(always)]
        fn load(x: &[f32]) -> Self {
            assert!(x.len() >= 16);
            Self(unsafe { _mm512_loadu_ps(x.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, out: &mut [f32]) {
            assert!(out.len() >= 16);
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_stream(self, out: &mut [f32]) {
            assert!(out.len() >= 16 && (out.as_ptr() as usize).is_multiple_of(64));
            unsafe { _mm512_stream_ps(out.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn fence() {
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            Self(unsafe { _mm512_set1_ps(x) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Self(unsafe { _mm512_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Self(unsafe { _mm512_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Self(unsafe { _mm512_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Self(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            Self(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            Self(unsafe { _mm512_min_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn floor(self) -> Self {
            Self(unsafe {
                _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(self.0)
            })
        }
        #[inline(always)]
        fn pow2i(n: Self) -> Self {
            unsafe {
                let i = _mm512_cvtps_epi32(n.0);
                let biased = _mm512_add_epi32(i, _mm512_set1_epi32(127));
                Self(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased)))
            }
        }
        #[inline(always)]
        fn frexp(self) -> (Self, Self) {
            unsafe {
                let bits = _mm512_castps_si512(self.0);
                let exp = _mm512_srli_epi32::<23>(bits);
                let e = _mm512_sub_ps(_mm512_cvtepi32_ps(exp), _mm512_set1_ps(126.0));
                let mant = _mm512_and_si512(bits, _mm512_set1_epi32(0x807f_ffff_u32 as i32));
                let m = _mm512_or_si512(mant, _mm512_set1_epi32(0x3f00_0000));
                (Self(e), Self(_mm512_castsi512_ps(m)))
            }
        }
        #[inline(always)]
        fn select_lt(self, o: Self, a: Self, b: Self) -> Self {
            unsafe {
                let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0);
                Self(_mm512_mask_blend_ps(m, b.0, a.0))
            }
        }
        #[inline(always)]
        fn keep_first(self, n: usize) -> Self {
            let mask: __mmask16 = if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
            Self(unsafe { _mm512_maskz_mov_ps(mask, self.0) })
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            unsafe {
                // Pairwise: the two 256-bit halves, then as AVX2 does.
                let lo = _mm512_castps512_ps256(self.0);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0)));
                let s8 = _mm256_add_ps(lo, hi);
                let h = _mm256_extractf128_ps::<1>(s8);
                let s = _mm_add_ps(_mm256_castps256_ps128(s8), h);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn hmax(self) -> f32 {
            unsafe { _mm512_reduce_max_ps(self.0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_exp_ln<V: Lanes>() {
        let mut worst_exp = 0f64;
        let mut worst_ln = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let xs: Vec<f32> = (0..V::N).map(|i| x + i as f32 * 1e-3).collect();
            let mut out = vec![0f32; V::N];
            exp(V::load(&xs)).store(&mut out);
            for (a, b) in xs.iter().zip(&out) {
                let want = (*a as f64).exp();
                worst_exp = worst_exp.max(((*b as f64 - want) / want).abs());
            }
            let ys: Vec<f32> = xs.iter().map(|v| v.exp().max(1e-37)).collect();
            ln(V::load(&ys)).store(&mut out);
            for (a, b) in ys.iter().zip(&out) {
                let want = (*a as f64).ln();
                worst_ln = worst_ln.max((*b as f64 - want).abs() / want.abs().max(1.0));
            }
            x += 0.0137;
        }
        assert!(worst_exp < 2.5e-7, "exp: max relative error {worst_exp:e}");
        assert!(worst_ln < 2.5e-7, "ln: max error {worst_ln:e}");
        let mut out = vec![0f32; V::N];
        exp(V::splat(-1e4)).store(&mut out);
        assert!(out[0] > 0.0 && out[0] < 2e-38);
        exp(V::splat(0.0)).store(&mut out);
        assert_eq!(out[0], 1.0);
        ln(V::splat(1.0)).store(&mut out);
        assert_eq!(out[0], 0.0);
        ln(V::splat(0.0)).store(&mut out);
        assert!(out[0].is_finite() && out[0] < -87.0);
        let v = V::load(&(1..=V::N).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(v.sum(), (V::N * (V::N + 1) / 2) as f32);
        assert_eq!(v.hmax(), V::N as f32);
        assert_eq!(v.keep_first(2).sum(), 3.0);
    }

    #[test]
    fn portable_exp_and_ln_are_accurate() {
        check_exp_ln::<Portable>();
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn avx2_checks() {
        check_exp_ln::<Avx2>();
    }

    #[test]
    fn avx2_exp_and_ln_are_accurate() {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2Fma.is_supported() {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { avx2_checks() };
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn avx512_checks() {
        check_exp_ln::<Avx512>();
    }

    #[test]
    fn avx512_exp_and_ln_are_accurate() {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx512.is_supported() {
            // SAFETY: AVX-512 F was detected.
            unsafe { avx512_checks() };
        }
    }

    #[test]
    fn the_isa_can_be_forced_for_a_comparison_and_restored() {
        let widest = detect();
        assert!(widest.is_supported());
        assert!(set_isa(Some(Isa::Portable)));
        assert_eq!(detect(), Isa::Portable);
        assert!(set_isa(None));
        assert_eq!(detect(), widest);
        for isa in Isa::ALL {
            assert_eq!(set_isa(Some(isa)), isa.is_supported());
            assert!(set_isa(None));
        }
        assert_eq!(available()[0], Isa::Portable);
    }
}
