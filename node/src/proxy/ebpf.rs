//! Loads rudder's eBPF programs into the kernel with aya.
//!
//! The object file is built from `ebpf/programs` by this crate's build script and embedded in the
//! binary, so a node needs no files besides `rudder` itself.

use aya::{Ebpf, EbpfError};

/// The compiled eBPF object (ELF for `bpfel-unknown-none`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rudder-ebpf"));

/// Errors from loading or attaching the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object could not be parsed or its maps could not be created.
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    /// A program named in the object is missing or of the wrong type.
    #[error("program {0} is missing from the eBPF object or has the wrong type")]
    Program(&'static str),
    /// The kernel verifier or the load syscall refused a program.
    #[error("the kernel refused program {name}")]
    Verify {
        /// Program name.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Parses the embedded object, creates its maps and loads every program through the verifier.
///
/// Needs `CAP_BPF` (root). Nothing is attached yet.
pub fn load() -> Result<Ebpf, Error> {
    let mut ebpf = Ebpf::load(OBJECT).map_err(Error::Load)?;
    let name = "rudder_from_pod";
    let program: &mut aya::programs::SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(Error::Program(name))?
        .try_into()
        .map_err(|_| Error::Program(name))?;
    program
        .load()
        .map_err(|source| Error::Verify { name, source })?;
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_a_bpf_elf() {
        assert!(OBJECT.len() > 64, "the eBPF object is empty: was it built?");
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        // e_machine 247 = EM_BPF
        assert_eq!(u16::from_le_bytes([OBJECT[18], OBJECT[19]]), 247);
    }

    /// Needs root and a BPF-capable kernel: run by `cargo xtask ci`.
    #[test]
    #[ignore = "needs root and BPF; run by cargo xtask ci"]
    fn programs_pass_the_verifier() {
        let ebpf = load().expect("load the datapath");
        assert!(ebpf.program("rudder_from_pod").is_some());
    }
}
