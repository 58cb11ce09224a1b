//! Running the system tools the node drives (`ip`, `sysctl`, `iptables-restore`, ...), optionally
//! inside a named network namespace, with their stderr in the error.

use std::{
    io::{self, Write},
    process::{Command, Stdio},
};

/// Runs `program args` (inside network namespace `netns` via `ip netns exec` when given), feeding
/// it `stdin`, and returns its stdout. A failure carries the command line and its stderr.
pub fn run(
    netns: Option<&str>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> io::Result<String> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let place = netns.map(|ns| format!(" (in {ns})")).unwrap_or_default();
        return Err(io::Error::other(format!(
            "{program} {}{place}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
