//! Shared by the kd-losses benches: a counting allocator for peak memory, the tests'
//! deterministic pseudo-random generator for logits, the median, and a timing loop.
// Each bench uses a subset.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The tests' deterministic generator (`bell` gives the benches' logits).
#[path = "../../tests/common/rng.rs"]
pub mod rng;

/// System allocator that tracks live and peak bytes (install it with `#[global_allocator]`).
pub struct Counting;

/// Bytes currently allocated.
pub static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Highest `LIVE` since the last reset.
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// The median (upper one for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Median and minimum ms of the timed runs, peak heap growth over them, and the loss value.
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub peak_mb: f64,
    pub loss: f32,
}

/// Times `call` (forward + backward, returns the loss) `runs` times after `warmups` calls
/// (at least one, which gives the loss).
pub fn time_call(warmups: usize, runs: usize, call: impl Fn() -> f32) -> Timing {
    let mut loss = call();
    for _ in 1..warmups {
        loss = call();
    }
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(call());
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base) as f64 / (1 << 20) as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Timing { median_ms: median(times), min_ms: min, peak_mb: peak, loss }
}
