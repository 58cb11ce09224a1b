//! Rebuild the programs when the `bpf-linker` on PATH changes: the linker is an undeclared build
//! dependency of every eBPF object.

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found on PATH: {err}"),
    }
}
