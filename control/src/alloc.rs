//! The `rudder` binary's memory allocator, chosen by what the process is.
//!
//! - `rudder server` (the control plane, and the agent of its own node) uses mimalloc: the
//!   control plane allocates and frees millions of small objects (decoded watch events, informer
//!   caches), where glibc's per-thread arenas fragment and spent a third of the CPU in
//!   `_int_malloc` at 30,000 pods (`cargo xtask bench control --hollow-nodes 1000 --pods
//!   30000`; docs/benchmarks.md).
//! - Everything else (`rudder agent`, the per-container `rudder shim`, `rudder proxy`, ...) uses
//!   the system allocator: a node agent with 100 pods kept 91–94 MB with mimalloc against 30 MB
//!   with glibc, and started a burst of 100 pods in 6.3 s against 2.4 s (`cargo xtask bench
//!   pods`).
//!
//! Under mimalloc, [`collect_idle`] returns freed memory to the OS when a runtime worker is
//! about to park, and [`long_lived`] puts the objects the caches keep (informer stores, the
//! scheduler's snapshot) in a heap of their own. mimalloc returns a page to the OS only when
//! every block on it is free; a cached pod allocated on the same page as a hundred decode
//! buffers of a burst keeps the whole page after the burst. At 31k pods the live heap was about
//! 175 MB while mimalloc held about 400 MiB, most of it such sparse pages.
//!
//! `RUDDER_ALLOCATOR=system` (or `mimalloc`) overrides the choice, for heap profilers such as
//! heaptrack that see only the system allocator.
//!
//! The choice is made at the process's first allocation, from `/proc/self/cmdline` read into a
//! buffer on the stack, and never changes, so every block is freed by the allocator that made
//! it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicPtr, AtomicU8, Ordering},
    time::{Duration, Instant},
};

use libmimalloc_sys::{self as mi, mi_heap_t};

/// Not decided yet.
const UNKNOWN: u8 = 0;
/// mimalloc.
const MIMALLOC: u8 = 1;
/// The system allocator.
const SYSTEM: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The global allocator of the `rudder` binary (see the module docs).
pub struct ByRole;

/// Whether a NUL-separated command line runs `rudder server`: its first argument after the
/// program is `server`.
pub fn is_server(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    args.next();
    args.next() == Some(b"server".as_slice())
}

/// `RUDDER_ALLOCATOR`'s choice, if it names one.
fn forced() -> Option<u8> {
    // SAFETY: getenv only scans the environment (no allocation); the pointer it returns is
    // read at once, before anything could change the environment.
    unsafe {
        let value = libc::getenv(c"RUDDER_ALLOCATOR".as_ptr());
        if value.is_null() {
            return None;
        }
        match std::ffi::CStr::from_ptr(value).to_bytes() {
            b"system" => Some(SYSTEM),
            b"mimalloc" => Some(MIMALLOC),
            _ => None,
        }
    }
}

/// The choice by role: mimalloc when this process is `rudder server`.
fn by_cmdline() -> u8 {
    let mut buf = [0u8; 512];
    // SAFETY: open/read/close on a stack buffer of the given length; no allocation happens
    // here, so calling it from inside the allocator cannot recurse.
    let read = unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            0
        } else {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            usize::try_from(n).unwrap_or(0)
        }
    };
    if is_server(buf.get(..read).unwrap_or_default()) {
        MIMALLOC
    } else {
        SYSTEM
    }
}

fn choice() -> u8 {
    let known = CHOICE.load(Ordering::Acquire);
    if known != UNKNOWN {
        return known;
    }
    let wanted = forced().unwrap_or_else(by_cmdline);
    // The first decision wins, should two threads make it at once.
    match CHOICE.compare_exchange(UNKNOWN, wanted, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => wanted,
        Err(decided) => decided,
    }
}

/// Has mimalloc return what this thread freed to the OS, at most once every 2 s per thread;
/// nothing under the system allocator. The async runtime's workers call it whenever they are
/// about to park, which under load is also in the middle of a burst (hence the 2 s limit).
///
/// mimalloc purges a freed page lazily, when the thread that owns it allocates or frees again
/// after a delay, so a worker that goes idle once a burst is over (the 30,000 pods of `cargo
/// xtask bench control` bound) kept about 90 MB it had freed. Purging at every free
/// (`MIMALLOC_PURGE_DELAY=0`) returned as much but cost a third of the binding rate; a
/// separate thread calling the same returned nothing, as the pages sit in the workers' heaps.
pub fn collect_idle() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    if choice() != MIMALLOC {
        return;
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(2))
        {
            last.set(Some(now));
            // SAFETY: mimalloc is this process's allocator (checked above); a forced
            // collection purges this thread's free pages and the arenas', then this thread's
            // part of the long-lived heap.
            unsafe {
                libmimalloc_sys::mi_collect(true);
                let long = LONG_HEAP.load(Ordering::Acquire);
                if !long.is_null() {
                    mi::mi_heap_collect(long, true);
                }
            }
        }
    });
}

thread_local! {
    /// How many [`long_lived`] calls this thread is inside.
    static LONG_LIVED: Cell<u32> = const { Cell::new(0) };
}

/// The mimalloc heap of long-lived objects (null until first used).
static LONG_HEAP: AtomicPtr<mi_heap_t> = AtomicPtr::new(std::ptr::null_mut());

/// The long-lived heap, made on first use. mimalloc 3's heaps serve any thread.
fn long_heap() -> *mut mi_heap_t {
    let heap = LONG_HEAP.load(Ordering::Acquire);
    if !heap.is_null() {
        return heap;
    }
    // mimalloc 2's heaps serve only the thread that made them: no long-lived heap there.
    // SAFETY: mi_version has no preconditions.
    if unsafe { mi::mi_version() } < 300 {
        return std::ptr::null_mut();
    }
    // SAFETY: mi_heap_new has no preconditions; its metadata comes from mimalloc's main heap,
    // not through this allocator.
    let made = unsafe { mi::mi_heap_new() };
    match LONG_HEAP.compare_exchange(
        std::ptr::null_mut(),
        made,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => made,
        Err(first) => {
            // Another thread made one first: ours has no blocks yet.
            // SAFETY: `made` is a heap we own and nothing was allocated in it.
            unsafe { mi::mi_heap_delete(made) };
            first
        }
    }
}

/// The heap this thread allocates long-lived objects in now, if it is inside [`long_lived`].
fn current_long_heap() -> Option<*mut mi_heap_t> {
    if LONG_LIVED.try_with(Cell::get).unwrap_or(0) == 0 {
        return None;
    }
    Some(long_heap()).filter(|heap| !heap.is_null())
}

/// Runs `f` with this thread's allocations going to the heap of long-lived objects (under
/// mimalloc; elsewhere it only runs `f`). For code that builds what a cache keeps: an
/// informer's store update, a scheduler snapshot entry. Those objects are freed as usual from
/// any thread; one reallocated outside `long_lived` moves back to the default heap.
pub fn long_lived<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let _ = LONG_LIVED.try_with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
    let _ = LONG_LIVED.try_with(|n| n.set(n.get().saturating_add(1)));
    let _leave = Leave;
    f()
}

/// mimalloc's allocation, in the long-lived heap when the thread is inside [`long_lived`].
///
/// # Safety
/// As [`GlobalAlloc::alloc`], with mimalloc as the process's allocator.
unsafe fn mi_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: the caller's contract; mimalloc's aligned calls accept any power-of-two alignment.
    unsafe {
        match (current_long_heap(), zeroed) {
            (Some(heap), false) => {
                mi::mi_heap_malloc_aligned(heap, layout.size(), layout.align()).cast()
            }
            (Some(heap), true) => {
                mi::mi_heap_zalloc_aligned(heap, layout.size(), layout.align()).cast()
            }
            (None, false) => mimalloc::MiMalloc.alloc(layout),
            (None, true) => mimalloc::MiMalloc.alloc_zeroed(layout),
        }
    }
}

/// mimalloc's reallocation, moving into the long-lived heap when the thread is inside
/// [`long_lived`] (a cache's table that grows).
///
/// # Safety
/// As [`GlobalAlloc::realloc`], with mimalloc as the process's allocator.
unsafe fn mi_realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: the caller's contract; `ptr` is a mimalloc block, which any heap may reallocate.
    unsafe {
        match current_long_heap() {
            Some(heap) => {
                mi::mi_heap_realloc_aligned(heap, ptr.cast(), new_size, layout.align()).cast()
            }
            None => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
        }
    }
}

// SAFETY: every call goes to one of two sound allocators, and the same one for the process's
// whole life (`choice` never changes once made), so blocks are always freed or grown by the
// allocator that made them.
unsafe impl GlobalAlloc for ByRole {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe {
            if choice() == MIMALLOC {
                mi_alloc(layout, false)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if choice() == MIMALLOC {
                mi_alloc(layout, true)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (see the impl's SAFETY note).
        unsafe {
            if choice() == MIMALLOC {
                mimalloc::MiMalloc.dealloc(ptr, layout);
            } else {
                System.dealloc(ptr, layout);
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (see the impl's SAFETY note).
        unsafe {
            if choice() == MIMALLOC {
                mi_realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_server_subcommand_gets_mimalloc() {
        assert!(is_server(b"/usr/bin/rudder\0server\0--data-dir\0/x\0"));
        assert!(is_server(b"rudder\0server"));
        assert!(!is_server(b"rudder\0agent\0--server\0https://x\0"));
        assert!(!is_server(b"rudder\0shim\0--\0server\0"));
        assert!(!is_server(b"rudder\0"));
        assert!(!is_server(b""));
    }

    unsafe extern "C" {
        /// mimalloc 3's test of a block's heap (not in libmimalloc-sys's bindings).
        fn mi_heap_contains(heap: *const mi_heap_t, p: *const std::ffi::c_void) -> bool;
    }

    #[test]
    fn long_lived_blocks_go_to_their_own_heap() {
        let layout = Layout::from_size_align(1000, 8).unwrap_or_else(|_| unreachable!());
        // SAFETY: mimalloc serves blocks to any caller; each block is freed with mi_free.
        unsafe {
            let plain = mi_alloc(layout, false);
            let kept = long_lived(|| mi_alloc(layout, true));
            let nested = long_lived(|| long_lived(|| mi_alloc(layout, false)));
            let after = mi_alloc(layout, false);
            let heap = long_heap();
            assert!(!mi_heap_contains(heap, plain.cast()));
            assert!(mi_heap_contains(heap, kept.cast()));
            assert!(mi_heap_contains(heap, nested.cast()));
            assert!(!mi_heap_contains(heap, after.cast()));
            assert_eq!(*kept, 0, "zeroed");
            let grown = long_lived(|| mi_realloc(plain, layout, 4000));
            assert!(mi_heap_contains(heap, grown.cast()));
            for p in [grown, kept, nested, after] {
                mi::mi_free(p.cast());
            }
        }
        assert_eq!(LONG_LIVED.with(Cell::get), 0);
    }
}
