//! Builds the eBPF programs in `ebpf/programs` with the nightly toolchain (aya-build) and leaves
//! the object in `OUT_DIR/rudder-ebpf`, where `proxy::ebpf` embeds it.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../ebpf/programs");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "rudder-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
