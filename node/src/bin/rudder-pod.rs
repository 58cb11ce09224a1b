//! `rudder-pod`: the pod-side entry points of the node library on their own — the container
//! shim (`rudder-pod shim ...`) and the built-in agnhost image (`rudder-pod agnhost netexec ...`).
//! The `rudder` binary has the same two (hidden) subcommands and the agent normally runs
//! `rudder` itself; this binary lets the node crate's tests and benchmarks run pods without the
//! control plane.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("shim") => rudder_node::runtime::shim::main(&args[1..]),
        Some("agnhost") => rudder_node::agnhost::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: rudder-pod shim FLAGS -- COMMAND... | rudder-pod agnhost SUBCOMMAND FLAGS..."
            );
            2
        }
    };
    std::process::exit(code);
}
