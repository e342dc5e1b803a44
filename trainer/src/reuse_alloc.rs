//! The trainer's global allocator: the system one, except that freed blocks
//! of 1 MiB and more are kept and handed out again for the next request of
//! the same size.
//!
//! Why: glibc serves every block over its mmap threshold (32 MB at most) with
//! a fresh `mmap` and returns it with `munmap`, so each training step faults
//! in and zeroes new pages for activations of the very sizes the previous
//! step freed (~10 % of a step in the kernel's page zeroing, `perf`).
//! A training step requests the same sizes every time, so exact-size reuse
//! is enough. jemalloc was measured instead and was slower (docs/demo-model.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Blocks at least this large are kept for reuse when freed.
pub const LARGE: usize = 1 << 20;
const SLOTS: usize = 512;

pub struct ReuseLarge {
    kept: Mutex<Kept>,
    /// At most this many bytes are kept (beyond it, freed blocks go back to
    /// the system).
    cap: usize,
    /// Off: every request goes to the system allocator (the bench's
    /// comparison). Set before the work starts.
    pub enabled: AtomicBool,
}

/// Kept blocks as (size, align, address); address 0 marks an empty slot.
struct Kept {
    blocks: [(usize, usize, usize); SLOTS],
    bytes: usize,
}

impl ReuseLarge {
    pub const fn new(cap: usize) -> Self {
        Self {
            kept: Mutex::new(Kept {
                blocks: [(0, 0, 0); SLOTS],
                bytes: 0,
            }),
            cap,
            enabled: AtomicBool::new(true),
        }
    }

    /// Bytes held for reuse now.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Nothing panics while the lock is held; a poisoned lock is still consistent.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reusable(&self, layout: Layout) -> bool {
        layout.size() >= LARGE && self.enabled.load(Ordering::Relaxed)
    }

    /// A kept block of exactly this layout, or null.
    fn take(&self, layout: Layout) -> *mut u8 {
        let mut kept = self.lock();
        let found = kept
            .blocks
            .iter()
            .position(|&(s, a, p)| p != 0 && s == layout.size() && a == layout.align());
        match found {
            Some(i) => {
                let addr = kept.blocks[i].2;
                kept.blocks[i] = (0, 0, 0);
                kept.bytes -= layout.size();
                addr as *mut u8
            }
            None => null_mut(),
        }
    }

    /// Keeps `ptr` for reuse if the cap and a free slot allow; false when
    /// the caller must free it.
    fn keep(&self, ptr: *mut u8, layout: Layout) -> bool {
        let mut kept = self.lock();
        if kept.bytes + layout.size() > self.cap {
            return false;
        }
        match kept.blocks.iter().position(|&(_, _, p)| p == 0) {
            Some(i) => {
                kept.blocks[i] = (layout.size(), layout.align(), ptr as usize);
                kept.bytes += layout.size();
                true
            }
            None => false,
        }
    }
}

// SAFETY: every block handed out comes from `System` with the same layout it
// is later freed with: a kept block is only reused for an identical layout.
unsafe impl GlobalAlloc for ReuseLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.reusable(layout) {
            let p = self.take(layout);
            if !p.is_null() {
                return p;
            }
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.reusable(layout) {
            let p = self.take(layout);
            if !p.is_null() {
                unsafe { p.write_bytes(0, layout.size()) };
                return p;
            }
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.reusable(layout) && self.keep(ptr, layout) {
            return;
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < LARGE && new_size < LARGE {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size, rounded up to the
        // alignment, does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).unwrap()
    }

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_size_only() {
        let a = ReuseLarge::new(64 << 20);
        unsafe {
            let p = a.alloc(layout(3 << 20));
            p.write_bytes(7, 3 << 20);
            a.dealloc(p, layout(3 << 20));
            assert_eq!(a.kept_bytes(), 3 << 20);
            // Another size does not get it.
            let q = a.alloc(layout(2 << 20));
            assert_ne!(q, p);
            assert_eq!(a.kept_bytes(), 3 << 20);
            // The same size does, and zeroed when asked.
            let r = a.alloc_zeroed(layout(3 << 20));
            assert_eq!(r, p);
            assert_eq!(a.kept_bytes(), 0);
            assert!(std::slice::from_raw_parts(r, 3 << 20)
                .iter()
                .all(|&b| b == 0));
            a.dealloc(q, layout(2 << 20));
            a.dealloc(r, layout(3 << 20));
            assert_eq!(a.kept_bytes(), 5 << 20);
        }
    }

    #[test]
    fn small_blocks_blocks_over_the_cap_and_a_disabled_allocator_keep_nothing() {
        let a = ReuseLarge::new(4 << 20);
        unsafe {
            let small = a.alloc(layout(LARGE - 1));
            a.dealloc(small, layout(LARGE - 1));
            assert_eq!(a.kept_bytes(), 0);
            let big = a.alloc(layout(5 << 20));
            a.dealloc(big, layout(5 << 20));
            assert_eq!(a.kept_bytes(), 0);
            a.enabled.store(false, Ordering::Relaxed);
            let p = a.alloc(layout(2 << 20));
            a.dealloc(p, layout(2 << 20));
            assert_eq!(a.kept_bytes(), 0);
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_the_threshold() {
        let a = ReuseLarge::new(64 << 20);
        unsafe {
            let mut p = a.alloc(layout(1000));
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            let mut old = 1000;
            for size in [2 << 20, 3 << 20, 500] {
                p = a.realloc(p, layout(old), size);
                old = size;
                let got = std::slice::from_raw_parts(p, 500);
                assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            }
            a.dealloc(p, layout(500));
        }
    }
}
