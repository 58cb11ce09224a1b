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
//! about to park.
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
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, Instant},
};

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
            // collection purges this thread's free pages and the arenas'.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}

// SAFETY: every call goes to one of two sound allocators, and the same one for the process's
// whole life (`choice` never changes once made), so blocks are always freed or grown by the
// allocator that made them.
unsafe impl GlobalAlloc for ByRole {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe {
            if choice() == MIMALLOC {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if choice() == MIMALLOC {
                mimalloc::MiMalloc.alloc_zeroed(layout)
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
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
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
}
