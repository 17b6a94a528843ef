//! The compact per-position encoding of a sparse teacher distribution.
//!
//! One position's top-k entries are stored as:
//!
//! - its **tail mass** `1 − Σ_k p_i` (an `f32`, in the block's tail array);
//! - a 4-bit **code width** `w` and a 4-bit **Rice parameter** `r`;
//! - `k` **log-probability codes** `c_i = round((max_j lp_j − lp_i) / Δ)` clamped to
//!   `2^bits − 1` (`Δ` = [`Quantizer::step`], `bits` = [`Quantizer::bits`]), in ascending id
//!   order; `w` is the fewest bits that hold the position's largest code `c_max`. A 1-bit mode
//!   says how they are stored: `0`, each in `w` bits (a flat distribution costs few bits per
//!   entry); `1`, a 4-bit Rice parameter `r₂`, `c_max` in `w` bits, then each `c_max − c_i` as a
//!   Rice code (most of a top-k sits near its bottom, so these are short). The encoder takes
//!   the shorter;
//! - the `k` **ids**, ascending, as Rice-coded gaps `id_0`, `id_1 − id_0 − 1`, … with the
//!   parameter `r` that makes them shortest.
//!
//! Decoding gives the ids and log-probabilities `lp_i = s − c_i·Δ`, where the shift `s` makes
//! `Σ_k exp(lp_i) = 1 − tail`: the top-k mass is exactly the stored one, and the distribution
//! renormalised over the top-k differs from the exact one only by the rounding of the codes
//! (KL ≈ `(1 − p_max)·Δ²/24`, measured in `benches/offline.rs`).

use std::fmt;

use super::file::SparseBlock;

/// How log-probabilities are quantised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Nats per code step `Δ`.
    pub step: f32,
    /// Largest code width in bits (codes are clamped to `2^bits − 1`, i.e. entries more than
    /// `(2^bits − 1)·Δ` nats below the position's most likely token are stored at that floor).
    pub bits: u32,
}

impl Default for Quantizer {
    /// `Δ = 0.1` nat, 8 bits (a floor 25.5 nats below the most likely token): at k = 128 the
    /// stored distribution is within 1e-3 nats (KL) of the exact top-k with a wide margin, and
    /// a 32000-token vocabulary takes under 256 bytes per token (`benches/offline.rs`).
    fn default() -> Self {
        Self { step: 0.1, bits: 8 }
    }
}

impl Quantizer {
    /// Checks the settings: `Δ` finite and `> 0`, `1 ≤ bits ≤ 15`.
    pub fn is_valid(&self) -> bool {
        self.step.is_finite() && self.step > 0.0 && (1..=15).contains(&self.bits)
    }

    fn max_code(&self) -> u32 {
        (1u32 << self.bits) - 1
    }
}

/// A decoding failure: the bytes do not hold what the header says (the block checksum passed,
/// so the file was written by another encoder or its header lies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends bits to a byte vector, least significant bit first.
#[derive(Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Writes the low `bits` bits of `value` (`bits ≤ 32`).
    fn put(&mut self, value: u32, bits: u32) {
        if bits == 0 {
            return;
        }
        self.acc |= u64::from(value & (((1u64 << bits) - 1) as u32)) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Rice code of `value` with parameter `r`: `value >> r` ones, a zero, the low `r` bits.
    fn rice(&mut self, value: u32, r: u32) {
        let mut q = value >> r;
        while q >= 16 {
            self.put(0xFFFF, 16);
            q -= 16;
        }
        self.put((1u32 << q) - 1, q + 1); // q ones then a zero
        self.put(value, r);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// Reads bits written by [`BitWriter`].
#[derive(Debug)]
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0, acc: 0, n: 0 }
    }

    fn refill(&mut self) {
        while self.n <= 56 && self.pos < self.bytes.len() {
            self.acc |= u64::from(self.bytes[self.pos]) << self.n;
            self.pos += 1;
            self.n += 8;
        }
    }

    fn get(&mut self, bits: u32) -> Result<u32, DecodeError> {
        if bits == 0 {
            return Ok(0);
        }
        if self.n < bits {
            self.refill();
            if self.n < bits {
                return Err(DecodeError("the bit stream ends inside a position".into()));
            }
        }
        let v = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.n -= bits;
        Ok(v)
    }

    fn rice(&mut self, r: u32) -> Result<u32, DecodeError> {
        let mut q = 0u32;
        loop {
            if self.n == 0 {
                self.refill();
                if self.n == 0 {
                    return Err(DecodeError("the bit stream ends inside a Rice code".into()));
                }
            }
            let ones = (!self.acc).trailing_zeros().min(self.n);
            q += ones;
            if ones == self.n {
                // Every buffered bit is a one (up to 64 of them: no shift by the full width).
                self.acc = 0;
                self.n = 0;
            } else {
                // `ones` ones, then the terminating zero.
                self.acc = (self.acc >> ones) >> 1;
                self.n -= ones + 1;
                break;
            }
            if q > 1 << 24 {
                return Err(DecodeError("a Rice code is longer than any id".into()));
            }
        }
        let low = self.get(r)?;
        q.checked_shl(r)
            .filter(|v| v >> r == q)
            .map(|v| v | low)
            .ok_or_else(|| DecodeError("a Rice code overflows 32 bits".into()))
    }
}

/// Bits of the Rice codes of `gaps` with parameter `r`.
fn rice_bits(gaps: &[u32], r: u32) -> u64 {
    gaps.iter().map(|&g| u64::from(g >> r) + 1 + u64::from(r)).sum()
}

/// The Rice parameter that codes `gaps` in the fewest bits.
fn best_rice(gaps: &[u32]) -> u32 {
    let mean = gaps.iter().map(|&g| u64::from(g)).sum::<u64>() / gaps.len().max(1) as u64;
    let guess = 63 - (mean | 1).leading_zeros(); // ⌊log2 mean⌋
    let lo = guess.saturating_sub(2);
    (lo..=(guess + 2).min(15)).min_by_key(|&r| rice_bits(gaps, r)).unwrap_or(0)
}

/// Encodes one block of positions.
///
/// `ids` and `logprobs` hold `k` entries per position (row-major `[positions, k]`, any order
/// within a row, distinct ids); `tails` one tail mass per position.
///
/// # Panics
/// When the lengths disagree (a bug of the caller, not of the data).
pub fn encode_block(
    ids: &[u32],
    logprobs: &[f32],
    tails: &[f32],
    k: usize,
    q: Quantizer,
) -> Vec<u8> {
    let positions = tails.len();
    assert!(
        ids.len() == positions * k && logprobs.len() == positions * k,
        "encode_block: {} ids and {} log-probs for {positions} positions of k = {k}",
        ids.len(),
        logprobs.len()
    );
    let mut out = Vec::with_capacity(positions * (4 + k * 2));
    for t in tails {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let mut bits = BitWriter::default();
    let mut entries: Vec<(u32, f32)> = Vec::with_capacity(k);
    let mut codes = Vec::with_capacity(k);
    let mut gaps = Vec::with_capacity(k);
    let mut below = Vec::with_capacity(k);
    for p in 0..positions {
        entries.clear();
        entries.extend(
            ids[p * k..(p + 1) * k]
                .iter()
                .copied()
                .zip(logprobs[p * k..(p + 1) * k].iter().copied()),
        );
        entries.sort_unstable_by_key(|e| e.0);
        let top = entries.iter().map(|e| e.1).fold(f32::NEG_INFINITY, f32::max);
        codes.clear();
        codes.extend(entries.iter().map(|&(_, lp)| {
            let c = ((top - lp) / q.step).round();
            if c.is_finite() { (c.max(0.0) as u32).min(q.max_code()) } else { q.max_code() }
        }));
        let width = 32 - codes.iter().copied().max().unwrap_or(0).leading_zeros();
        gaps.clear();
        let mut next = 0u32;
        for &(id, _) in &entries {
            gaps.push(id - next);
            next = id + 1;
        }
        let r = best_rice(&gaps);
        bits.put(width, 4);
        bits.put(r, 4);
        // The codes at `width` bits each, or as Rice codes of their distance below the largest
        // code (the bulk of a top-k sits near its bottom), whichever is shorter.
        let cmax = codes.iter().copied().max().unwrap_or(0);
        below.clear();
        below.extend(codes.iter().map(|&c| cmax - c));
        let r2 = best_rice(&below);
        let fixed = (codes.len() as u64) * u64::from(width);
        if 4 + u64::from(width) + rice_bits(&below, r2) < fixed {
            bits.put(1, 1);
            bits.put(r2, 4);
            bits.put(cmax, width);
            for &b in &below {
                bits.rice(b, r2);
            }
        } else {
            bits.put(0, 1);
            for &c in &codes {
                bits.put(c, width);
            }
        }
        for &g in &gaps {
            bits.rice(g, r);
        }
    }
    out.extend(bits.finish());
    out
}

/// Decodes one block written by [`encode_block`] into `out`: ids and log-probabilities
/// (`[positions, k]`, ascending ids per position, log-probabilities with `Σ_k exp = 1 − tail`)
/// and tails.
///
/// # Errors
/// [`DecodeError`] when the bytes end early, an id reaches `vocab`, or a width is out of range.
pub fn decode_block(
    bytes: &[u8],
    positions: usize,
    k: usize,
    vocab: usize,
    q: Quantizer,
    out: &mut SparseBlock,
) -> Result<(), DecodeError> {
    let SparseBlock { ids, logprobs, tails } = out;
    let head = positions * 4;
    if bytes.len() < head {
        return Err(DecodeError(format!(
            "{} bytes cannot hold the {positions} tail masses",
            bytes.len()
        )));
    }
    tails.clear();
    tails.extend(
        bytes[..head].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    ids.clear();
    logprobs.clear();
    let mut reader = BitReader::new(&bytes[head..]);
    for (p, &tail) in tails.iter().enumerate() {
        if !(0.0..1.0).contains(&tail) {
            return Err(DecodeError(format!("position {p}: tail mass {tail} is not in [0, 1)")));
        }
        let width = reader.get(4)?;
        let r = reader.get(4)?;
        if width > q.bits {
            return Err(DecodeError(format!(
                "position {p}: code width {width} exceeds the header's {} bits",
                q.bits
            )));
        }
        let start = logprobs.len();
        let mut max_rel = f64::NEG_INFINITY;
        let rice_mode = reader.get(1)? == 1;
        let (r2, cmax) = if rice_mode { (reader.get(4)?, reader.get(width)?) } else { (0, 0) };
        for _ in 0..k {
            let code = if rice_mode {
                let b = reader.rice(r2)?;
                cmax.checked_sub(b)
                    .ok_or_else(|| DecodeError(format!("position {p}: a code lies below code 0")))?
            } else {
                reader.get(width)?
            };
            let rel = -f64::from(code) * f64::from(q.step);
            max_rel = max_rel.max(rel);
            logprobs.push(rel as f32);
        }
        // Shift so that the top-k mass is 1 − tail: s = ln(1 − tail) − ln Σ exp(rel).
        let sum: f64 = logprobs[start..].iter().map(|&v| (f64::from(v) - max_rel).exp()).sum();
        let shift = (1.0 - f64::from(tail)).ln() - (max_rel + sum.ln());
        for v in &mut logprobs[start..] {
            *v = (f64::from(*v) + shift) as f32;
        }
        let mut next = 0u64;
        for _ in 0..k {
            let id = next + u64::from(reader.rice(r)?);
            if id >= vocab as u64 {
                return Err(DecodeError(format!(
                    "position {p}: id {id} is outside the vocabulary of {vocab}"
                )));
            }
            ids.push(id as u32);
            next = id + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_rice_codes_round_trip() {
        let mut w = BitWriter::default();
        let values = [0u32, 1, 5, 255, 1000, 70_000, 3, 0, 12345];
        for (i, &v) in values.iter().enumerate() {
            w.put(v & 0xFF, 8);
            w.rice(v, (i % 6) as u32);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(r.get(8).unwrap(), v & 0xFF);
            assert_eq!(r.rice((i % 6) as u32).unwrap(), v);
        }
    }

    #[test]
    fn long_runs_of_ones_decode() {
        // One huge gap among small ones: its unary quotient spans more than the 64-bit buffer.
        let k = 128;
        let mut ids: Vec<u32> = (0..k as u32 - 1).collect();
        ids.push(5000);
        let lps: Vec<f32> = (0..k).map(|i| -(i as f32) / 10.0).collect();
        let q = Quantizer::default();
        let bytes = encode_block(&ids, &lps, &[0.25], k, q);
        let mut out = SparseBlock::default();
        decode_block(&bytes, 1, k, 5001, q, &mut out).unwrap();
        assert_eq!(out.ids, ids);
        let mut w = BitWriter::default();
        for v in [0u32, 63, 64, 65, 127, 128, 1000, 70_000] {
            w.rice(v, 0);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for v in [0u32, 63, 64, 65, 127, 128, 1000, 70_000] {
            assert_eq!(r.rice(0).unwrap(), v);
        }
    }

    #[test]
    fn truncated_streams_are_errors_not_panics() {
        let lp = [-0.5f32, -1.5, -3.0];
        let bytes = encode_block(&[7, 2, 9], &lp, &[0.1], 3, Quantizer::default());
        let mut out = SparseBlock::default();
        for cut in 0..bytes.len() {
            let res = decode_block(&bytes[..cut], 1, 3, 10, Quantizer::default(), &mut out);
            assert!(res.is_err(), "a block cut at {cut} of {} bytes decoded", bytes.len());
        }
        assert!(decode_block(&bytes, 1, 3, 9, Quantizer::default(), &mut out).is_err());
    }
}
