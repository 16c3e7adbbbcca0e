//! Records the commit the binary is built from (`tenant_edge_build_info{commit}`), from
//! `TENANT_EDGE_COMMIT` when set (a build without `.git`, such as a Docker build), else from
//! `git rev-parse`; "unknown" when neither answers.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TENANT_EDGE_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("TENANT_EDGE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TENANT_EDGE_COMMIT={commit}");
}
