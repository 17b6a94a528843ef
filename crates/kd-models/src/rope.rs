//! Rotary position embeddings (RoPE) of the LLaMA family: the inverse frequencies with their
//! scalings (`default`, `linear`, `llama3`), the cos/sin tables and their application.

use std::f64::consts::PI;

use burn::module::Module;
use burn::tensor::{Int, Tensor};

use crate::layers::{float_dtype, tensor_from_vec};

/// RoPE frequency scaling (`rope_scaling` in transformers 4, `rope_parameters` in 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: "default"`: plain `θ^(-2i/d)` frequencies.
    Default,
    /// `rope_type: "linear"`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// `rope_type: "llama3"`: low frequencies divided by `factor`, high frequencies kept,
    /// a smooth blend in between (LLaMA 3.1+).
    Llama3 {
        /// Scale of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length of the unscaled pre-training.
        original_max_position_embeddings: usize,
    },
}

/// Rotary position embedding: the inverse frequencies `ω` of one head.
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    /// `ω_i`, `i < head_dim / 2`, after any scaling.
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// Frequencies of a head of `head_dim` with base `rope_theta` and `scaling`.
    pub fn new(head_dim: usize, rope_theta: f64, scaling: RopeScaling) -> Self {
        Self { inv_freq: inverse_frequencies(head_dim, rope_theta, scaling) }
    }

    /// `cos(p·ω)` and `sin(p·ω)` with the half-split layout, ready to broadcast over heads.
    /// // positions [b, s] -> ([b, 1, s, head_dim], [b, 1, s, head_dim])
    pub fn cos_sin(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let half = self.inv_freq.len();
        let device = positions.device();
        let inv_freq = tensor_from_vec(self.inv_freq.clone(), [1, 1, half], &device);
        let freqs = positions.float().unsqueeze_dim::<3>(2).mul(inv_freq); // [b, s, d/2]
        let angles = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1); // [b, 1, s, d]
        (angles.clone().cos(), angles.sin())
    }
}

/// `x · cos + rotate_half(x) · sin`. // [b, h, s, d] -> [b, h, s, d]
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let dtype = float_dtype(&x);
    let (cos, sin) = (cos.clone().cast(dtype), sin.clone().cast(dtype));
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x.mul(cos).add(rotated.mul(sin))
}

/// The inverse RoPE frequencies `ω_i = θ^(−2i/d)` of a head of `d = head_dim`, with `scaling`
/// applied.
pub fn inverse_frequencies(head_dim: usize, rope_theta: f64, scaling: RopeScaling) -> Vec<f32> {
    let d = head_dim;
    let base: Vec<f64> =
        (0..d / 2).map(|i| 1.0 / rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    let scaled: Vec<f64> = match scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|w| w / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&w| {
                    let wavelen = 2.0 * PI / w;
                    if wavelen < high_freq_wavelen {
                        w // high frequency: kept
                    } else if wavelen > low_freq_wavelen {
                        w / factor // low frequency: interpolated
                    } else {
                        // in between: blend of the two
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * w / factor + smooth * w
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|w| w as f32).collect()
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let scaled = inverse_frequencies(128, 500000.0, llama3);
        let plain = inverse_frequencies(128, 500000.0, RopeScaling::Default);
        assert_eq!(scaled[0], plain[0]); // wavelength 2π < 2048: kept
        let last = plain.len() - 1; // wavelength ≫ 8192: divided by 8
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
        for (s, p) in scaled.iter().zip(&plain) {
            assert!(*s <= *p && *s >= p / 8.0 - 1e-12);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let d = Device::flex();
        let rope = RotaryEmbedding::new(4, 10000.0, RopeScaling::Default);
        let (cos, sin) = rope.cos_sin(Tensor::<2, Int>::zeros([1, 1], &d));
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &d).reshape([1, 1, 1, 4]);
        let y = apply_rope(x.clone(), &cos, &sin);
        assert_eq!(y.into_data().try_into_vec_as::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }
}
