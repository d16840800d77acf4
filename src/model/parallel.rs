//! Data parallelism on candle's own worker pool.
//!
//! candle's CPU ops run on a persistent pool whose workers spin for a while after each op. A second
//! pool (rayon) for our kernels would have its threads compete with those spinning workers on every
//! layer, so our kernels run on candle's pool too: one set of threads for the whole forward.

use std::ops::Range;

/// Calls `f` on disjoint sub-ranges of `0..n` from all of candle's worker threads; returns when all
/// are done. Runs inline when called from inside the pool.
pub fn parallel_for<F: Fn(Range<usize>) + Sync>(n: usize, f: F) {
    candle_core::utils::barrier_pool().execute_chunked(n, f);
}

/// A mutable buffer that parallel work items write disjoint parts of.
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// Safety: access goes through `slice`, whose callers guarantee disjointness.
unsafe impl<T: Send> Sync for SharedMut<T> {}
unsafe impl<T: Send> Send for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(buffer: &mut [T]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }

    /// `buffer[index] = value`.
    ///
    /// # Safety
    /// No other work item may access `index` during the parallel section.
    pub unsafe fn write(&self, index: usize, value: T) {
        assert!(index < self.len, "write out of bounds");
        *self.ptr.add(index) = value;
    }

    /// `buffer[start..start + len]`.
    ///
    /// # Safety
    /// No two live slices may overlap, and the buffer must outlive them (it is borrowed mutably by
    /// `new`'s caller for the duration of the parallel section).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "slice out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}
