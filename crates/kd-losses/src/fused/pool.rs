//! A small bounded pool of gradient buffers, so that a training step pays no first-touch page
//! faults on the fused kernels' one `rows × vocab` buffer.
//!
//! A fresh 250 MB buffer costs ~75 ms of page faults on two threads at 2048 × 32000 — more than
//! the kernel itself. The fused op takes its buffer from this pool and hands it to burn as a
//! tensor whose storage returns the buffer here when burn drops it (after the backward pass has
//! consumed the gradient), so the next step finds it already mapped. At most [`MAX_BUFFERS`]
//! buffers are kept; a buffer is reused only for a request between half its capacity and its
//! capacity, so a small call never pins a huge buffer. [`release_buffers`] empties the pool.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{DType, Shape};
use burn_std::{AccessError, AccessPolicy, AllocationController, AllocationProperty, Bytes};

/// Most buffers the pool keeps.
pub const MAX_BUFFERS: usize = 2;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Frees every buffer the pool holds (they are otherwise kept for the next call).
///
/// # Example
/// ```
/// kd_losses::fused::release_buffers();
/// assert_eq!(kd_losses::fused::pooled_bytes(), 0);
/// ```
pub fn release_buffers() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Bytes currently held by the pool (buffers waiting for reuse).
pub fn pooled_bytes() -> usize {
    let pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.iter().map(|b| b.capacity() * 4).sum()
}

/// A buffer of exactly `n` floats: a pooled one when one fits, else a fresh zeroed one. Its
/// contents are unspecified (the kernels overwrite every element).
pub(crate) fn take(n: usize) -> Vec<f32> {
    let reused = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n && b.capacity() / 2 <= n)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    };
    match reused {
        Some(mut buf) => {
            // Within capacity: no reallocation, and the prefix is already mapped.
            buf.resize(n, 0.0);
            buf
        }
        None => vec![0f32; n],
    }
}

/// Returns a buffer to the pool (dropping the largest surplus buffer when the pool is full).
fn give_back(buf: Vec<f32>) {
    if buf.capacity() == 0 {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.push(buf);
    if pool.len() > MAX_BUFFERS {
        // Keep the most recently used ones: drop the oldest.
        pool.remove(0);
    }
}

/// Storage of a pooled buffer inside a burn tensor; gives the buffer back on drop.
struct Pooled {
    buf: Vec<f32>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

impl AllocationController for Pooled {
    fn alloc_align(&self) -> usize {
        align_of::<f32>()
    }

    fn property(&self) -> AllocationProperty {
        AllocationProperty::Other
    }

    unsafe fn memory_mut(
        &mut self,
        _policy: AccessPolicy,
    ) -> Result<&mut [MaybeUninit<u8>], AccessError> {
        let len = self.buf.len() * 4;
        // SAFETY: the Vec owns `len` initialised bytes; the caller only writes initialised data.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast(), len) })
    }

    fn memory(&self, _policy: AccessPolicy) -> Result<&[MaybeUninit<u8>], AccessError> {
        let len = self.buf.len() * 4;
        // SAFETY: the Vec owns `len` initialised bytes.
        Ok(unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast(), len) })
    }
}

/// Wraps a buffer from [`take`] as a contiguous `f32` flex tensor that returns it to the pool
/// when dropped.
///
/// # Panics
/// When `buf.len()` is not the number of elements of `shape`.
pub(crate) fn into_tensor(buf: Vec<f32>, shape: &[usize]) -> FlexTensor {
    assert_eq!(buf.len(), shape.iter().product::<usize>(), "pooled buffer length");
    let len = buf.len() * 4;
    // SAFETY: the controller's memory is exactly `len` initialised bytes.
    let bytes = unsafe { Bytes::from_controller(Box::new(Pooled { buf }), len) };
    FlexTensor::new(bytes, Layout::contiguous(Shape::from(shape.to_vec())), DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_tensor_drops() {
        // Other tests run in parallel and use the pool too: only check what this test owns.
        let n = 12_345;
        let mut buf = take(n);
        assert_eq!(buf.len(), n);
        buf.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        let ptr = buf.as_ptr();
        let t = into_tensor(buf, &[3, 4115]);
        assert_eq!(t.as_slice::<f32>().unwrap()[7], 7.0);
        let data = t.clone().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(data[n - 1], (n - 1) as f32);
        drop(t);
        let again = take(n - 5);
        assert_eq!(again.len(), n - 5);
        // The same allocation, unless a parallel test took it first.
        if again.as_ptr() == ptr {
            assert_eq!(again[100], 100.0);
        }
        drop(again);
    }

    #[test]
    fn small_requests_do_not_pin_large_buffers() {
        give_back(vec![0f32; 1 << 16]);
        let small = take(10);
        assert!(small.capacity() < 1 << 15);
    }
}
