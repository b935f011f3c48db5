//! flashgate's development tools, kept out of the production crate: they
//! start throwaway servers and drive load, and the gateway never needs them.
//!
//! - `devstack`: throwaway local Redis (standalone, cluster, TLS) and PostgreSQL servers for the
//!   demo, the bench and the tests.
//! - `loadgen`: the open-model HTTP load generator behind `demo` and `bench`.
//! - `demo`: `flashgate-dev demo`, a whole flash sale on local throwaway servers.
//! - `bench`: `flashgate-dev bench`, scenarios, the knee and the comparison with its ceilings.

pub mod bench;
pub mod demo;
pub mod devstack;
pub mod loadgen;

use anyhow::Context;

/// The `flashgate` gateway binary the tools start: `FLASHGATE_BIN` when
/// set, else the one cargo built beside this binary (`target/<profile>/`,
/// also from a test binary in `target/<profile>/deps/`).
pub fn gateway_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(bin) = std::env::var_os("FLASHGATE_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("this binary has no directory")?;
    let candidates = [dir.join("flashgate"), dir.join("../flashgate")];
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .with_context(|| {
            format!(
                "no flashgate binary beside {}: build the workspace (cargo build --workspace) or set FLASHGATE_BIN",
                exe.display()
            )
        })
}
