//! The deployment files in `deploy/`: every YAML file parses; the Kamal
//! excerpt has the shape the seed's Caddy setup needs (tenant-edge as a host-network accessory
//! with its data directory on a volume, kamal-proxy on 127.0.0.1 with `ssl: false`) and agrees
//! with the config it mounts; every tenant-edge config embedded in `deploy/` (the mounted file,
//! and each ```yaml block of deploy/README.md with a top-level `listen:`) passes
//! `tenant-edge check --syntax-only`; the Dockerfile is multi-stage, non-root, with
//! cap_net_bind_service; the systemd unit reloads through Pingora's graceful upgrade.
//!
//! Two tests run the real thing: `systemd/upgrade.sh` (the unit's ExecReload=) swaps a
//! daemonized edge for a new process while requests keep arriving, and the unit's gating
//! ExecStartPre= stops a start on a taken port but not on an unreachable database.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value;

const EDGE: &str = env!("CARGO_BIN_EXE_tenant-edge");
const UPSTREAM: &str = env!("CARGO_BIN_EXE_demo-upstream");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn deploy() -> PathBuf {
    Path::new(ROOT).join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every document of a (possibly multi-document) YAML text.
fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    serde_yaml::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect()
}

/// `value[a][b]...`, or Null.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    static NULL: Value = Value::Null;
    path.iter()
        .fold(value, |v, key| v.get(*key).unwrap_or(&NULL))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string: {:?}", path.join("."), at(value, path)))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The ```yaml blocks of a Markdown text (fences may be indented, e.g. inside a list).
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed.starts_with("```yaml") || trimmed.starts_with("```yml") => {
                current = Some((indent, Vec::new()));
            }
            Some((_, lines)) if trimmed.starts_with("```") => {
                blocks.push(lines.join("\n") + "\n");
                current = None;
            }
            Some((fence_indent, lines)) => {
                let cut = line
                    .char_indices()
                    .take_while(|(i, c)| *i < *fence_indent && *c == ' ')
                    .count();
                lines.push(line[cut..].to_string());
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```yaml block");
    blocks
}

/// `tenant-edge check [--syntax-only] -c FILE` with the secrets the shipped configs name.
fn check(file: &Path, syntax_only: bool) -> (i32, String) {
    let mut cmd = Command::new(EDGE);
    cmd.arg("check");
    if syntax_only {
        cmd.arg("--syntax-only");
    }
    let out = cmd
        .arg("-c")
        .arg(file)
        .env("DATABASE_URL", "postgres://u@db.internal/app")
        .env("ACME_EMAIL", "ops@example.com")
        .output()
        .expect("run tenant-edge check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn assert_check_passes(file: &Path, what: &str) {
    let (code, out) = check(file, true);
    assert_eq!(
        code, 0,
        "{what}: tenant-edge check --syntax-only fails:\n{out}"
    );
    assert!(out.contains("the configuration is valid"), "{what}:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------------------------

#[test]
fn every_yaml_file_in_deploy_parses() {
    let mut parsed = 0;
    for path in files_under(&deploy()) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "yml" && ext != "yaml" {
            continue;
        }
        let docs = yaml_documents(&read(&path))
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        assert!(!docs.is_empty(), "{}: no YAML document", path.display());
        parsed += 1;
    }
    assert!(
        parsed >= 2,
        "expected at least deploy/kamal/deploy.yml and deploy/kamal/tenant-edge.yml"
    );
}

#[test]
fn every_embedded_tenant_edge_config_passes_check() {
    let mut checked = Vec::new();

    // The file the Kamal accessory mounts.
    let mounted = deploy().join("kamal/tenant-edge.yml");
    assert_check_passes(&mounted, "deploy/kamal/tenant-edge.yml");
    checked.push(mounted.display().to_string());

    // Any other YAML file or document under deploy/ that is a tenant-edge config.
    for path in files_under(&deploy()) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if (ext != "yml" && ext != "yaml") || path == mounted {
            continue;
        }
        let docs = yaml_documents(&read(&path)).unwrap();
        for (i, doc) in docs.iter().enumerate() {
            if doc.get("listen").is_none() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("embedded.yml");
            fs::write(&file, serde_yaml::to_string(doc).unwrap()).unwrap();
            let what = format!("{} document {i}", path.display());
            assert_check_passes(&file, &what);
            checked.push(what);
        }
    }

    // ```yaml blocks of deploy/README.md with a top-level `listen:`.
    let readme = read(&deploy().join("README.md"));
    let blocks = yaml_blocks(&readme);
    let mut in_readme = 0;
    for (i, block) in blocks.iter().enumerate() {
        let docs = yaml_documents(block)
            .unwrap_or_else(|e| panic!("deploy/README.md yaml block {i} is not YAML: {e}"));
        if !docs.iter().any(|d| d.get("listen").is_some()) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("readme-block.yml");
        fs::write(&file, block).unwrap();
        assert_check_passes(&file, &format!("deploy/README.md yaml block {i}:\n{block}"));
        in_readme += 1;
        checked.push(format!("deploy/README.md block {i}"));
    }
    assert!(
        in_readme >= 1,
        "deploy/README.md should show at least one complete config"
    );
    eprintln!("checked: {checked:?}");
}

/// The Kamal excerpt: tenant-edge replaces the Caddy accessory, kamal-proxy moves to loopback.
#[test]
fn kamal_deploy_yml_runs_the_edge_in_front_of_a_loopback_kamal_proxy() {
    let docs = yaml_documents(&read(&deploy().join("kamal/deploy.yml"))).unwrap();
    assert_eq!(docs.len(), 1, "deploy.yml is one document");
    let kamal = &docs[0];

    // kamal-proxy: no TLS, every Host to the app, published on 127.0.0.1 only.
    let proxy = at(kamal, &["proxy"]);
    assert_eq!(
        proxy.get("ssl"),
        Some(&Value::Bool(false)),
        "proxy.ssl: false"
    );
    assert!(
        proxy.get("host").is_none() && proxy.get("hosts").is_none(),
        "a multi-tenant app must get every Host: no proxy.host(s)"
    );
    assert!(
        proxy.get("bind_ips").is_none(),
        "bind_ips belongs under proxy.run (Kamal rejects unknown keys)"
    );
    assert_eq!(strings(at(proxy, &["run", "bind_ips"])), ["127.0.0.1"]);
    let http_port = at(proxy, &["run", "http_port"])
        .as_u64()
        .expect("proxy.run.http_port");
    let https_port = at(proxy, &["run", "https_port"])
        .as_u64()
        .expect("proxy.run.https_port");
    assert!(
        ![80, 443].contains(&http_port) && ![80, 443].contains(&https_port),
        "kamal-proxy must leave :80/:443 to tenant-edge"
    );
    assert_eq!(at(proxy, &["forward_headers"]), &Value::Bool(true));

    // No Caddy left; the edge accessory on every web host.
    let accessories = at(kamal, &["accessories"])
        .as_mapping()
        .expect("accessories");
    assert!(
        accessories.get("caddy").is_none(),
        "tenant-edge replaces the Caddy accessory"
    );
    let edge = at(kamal, &["accessories", "tenant-edge"]);
    assert!(edge.is_mapping(), "accessories.tenant-edge");
    assert!(
        str_at(edge, &["image"]).contains("tenant-edge"),
        "accessory image"
    );
    assert!(
        ["host", "hosts", "role", "roles"]
            .iter()
            .any(|k| edge.get(*k).is_some()),
        "the accessory names its hosts or roles"
    );
    if let Some(roles) = edge.get("roles") {
        let servers = at(kamal, &["servers"]).as_mapping().expect("servers");
        for role in strings(roles) {
            assert!(
                servers.contains_key(role.as_str()),
                "role {role} is not in servers"
            );
        }
    }

    // Host networking, the Kamal 2 way (a second --network in options would conflict).
    assert_eq!(
        str_at(edge, &["network"]),
        "host",
        "accessory network: host"
    );
    assert!(
        at(edge, &["options", "network"]).is_null(),
        "network goes in the accessory's `network` key, not in options"
    );
    // Kamal turns options into `--<key> <value>`: Docker spells them with dashes.
    if let Some(options) = edge.get("options").and_then(Value::as_mapping) {
        for key in options.keys() {
            let key = key.as_str().unwrap();
            assert!(!key.contains('_'), "docker option {key:?} must use dashes");
        }
    }

    // The mounted config, and what must agree with it.
    let files = strings(at(edge, &["files"]));
    let config_mount = files
        .iter()
        .find(|f| f.contains("tenant-edge.yml"))
        .expect("files: mounts the tenant-edge config");
    let mut parts = config_mount.split(':');
    let (local, remote) = (parts.next().unwrap(), parts.next().unwrap());
    let local_name = Path::new(local).file_name().unwrap();
    let shipped = deploy().join("kamal").join(local_name);
    assert!(
        shipped.exists(),
        "{local} is shipped as {}",
        shipped.display()
    );
    let config = &yaml_documents(&read(&shipped)).unwrap()[0];

    let cmd = str_at(edge, &["cmd"]);
    assert!(cmd.starts_with("run "), "cmd runs the edge: {cmd}");
    assert!(
        cmd.contains(&format!("-c {remote}")),
        "cmd reads the mounted config {remote}: {cmd}"
    );
    assert!(
        !cmd.contains("-d"),
        "no daemon mode inside a container: {cmd}"
    );

    let data_dir = str_at(config, &["data_dir"]);
    let volumes = strings(at(edge, &["volumes"]));
    assert!(
        volumes
            .iter()
            .any(|v| v.split(':').nth(1) == Some(data_dir)),
        "a volume on the data directory {data_dir}: {volumes:?}"
    );

    // The edge's upstream is kamal-proxy's published loopback port.
    let backends = strings(at(config, &["upstreams", "pools", "app", "backends"]));
    assert_eq!(backends, [format!("127.0.0.1:{http_port}")]);
    assert_eq!(
        str_at(
            config,
            &["upstreams", "pools", "app", "health_check", "path"]
        ),
        "/up"
    );

    // Every ${VAR} of the config comes from the accessory's env.
    let env: BTreeSet<String> = strings(at(edge, &["env", "secret"]))
        .into_iter()
        .chain(
            at(edge, &["env", "clear"])
                .as_mapping()
                .map(|m| {
                    m.keys()
                        .map(|k| k.as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .collect();
    for var in ["DATABASE_URL", "ACME_EMAIL"] {
        assert!(env.contains(var), "env.secret has {var}");
    }
    let text = read(&shipped);
    for (i, _) in text.match_indices("${") {
        let name: String = text[i + 2..].chars().take_while(|c| *c != '}').collect();
        assert!(
            env.contains(&name),
            "the config reads ${{{name}}}, the accessory does not set it"
        );
    }

    // Docker's stop timeout leaves room for the drain.
    let stop_timeout = at(edge, &["options", "stop-timeout"])
        .as_u64()
        .expect("options.stop-timeout");
    let drain = seconds(str_at(config, &["server", "grace_period"]))
        + seconds(str_at(config, &["server", "graceful_shutdown_timeout"]));
    assert!(
        stop_timeout > drain,
        "stop-timeout {stop_timeout}s must exceed the drain ({drain}s)"
    );
}

/// "10s" → 10 (the shipped files use whole seconds).
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected whole seconds such as 10s, got {text:?}"))
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_cap_net_bind_service() {
    let dockerfile = read(&deploy().join("docker/Dockerfile"));
    let instructions: Vec<String> = logical_lines(&dockerfile);
    let upper = |l: &String| l.split_whitespace().next().unwrap_or("").to_uppercase();

    let froms: Vec<&String> = instructions.iter().filter(|l| upper(l) == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms
            .iter()
            .any(|l| l.to_lowercase().contains(" as builder")),
        "a named builder stage: {froms:?}"
    );
    assert!(
        instructions
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "cargo build --release --locked"
    );
    assert!(
        instructions
            .iter()
            .any(|l| l.contains("setcap cap_net_bind_service=+ep")),
        "setcap cap_net_bind_service=+ep on the binary"
    );

    // The last USER before the end is a non-root user.
    let user = instructions
        .iter()
        .rev()
        .find(|l| upper(l) == "USER")
        .expect("a USER instruction");
    let name = user.split_whitespace().nth(1).unwrap();
    let name = name.split(':').next().unwrap();
    assert!(
        name != "root" && name != "0",
        "runs as a non-root user: {user}"
    );

    // Exec-form instructions are valid JSON arrays.
    let json_of = |keyword: &str| -> Vec<String> {
        let line = instructions
            .iter()
            .find(|l| upper(l) == keyword)
            .unwrap_or_else(|| panic!("a {keyword} instruction"));
        let rest = line[keyword.len()..].trim();
        serde_json::from_str(rest).unwrap_or_else(|e| panic!("{keyword} {rest}: {e}"))
    };
    assert_eq!(json_of("ENTRYPOINT"), ["tenant-edge"]);
    let cmd = json_of("CMD");
    assert_eq!(cmd[0], "run");
    let healthcheck = instructions
        .iter()
        .find(|l| upper(l) == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    let exec = &healthcheck[healthcheck.find("CMD").unwrap() + 3..];
    let hc: Vec<String> = serde_json::from_str(exec.trim()).expect("HEALTHCHECK CMD JSON");
    assert!(hc.join(" ").contains("/dev/tcp/127.0.0.1/9731"), "{hc:?}");

    // The data directory is a volume, and the one the Kamal config uses.
    let kamal_config = &yaml_documents(&read(&deploy().join("kamal/tenant-edge.yml"))).unwrap()[0];
    let data_dir = str_at(kamal_config, &["data_dir"]);
    assert!(
        instructions
            .iter()
            .any(|l| upper(l) == "VOLUME" && l.contains(data_dir)),
        "VOLUME {data_dir}"
    );
    // The default CMD reads the path the accessory mounts the config at.
    let kamal = &yaml_documents(&read(&deploy().join("kamal/deploy.yml"))).unwrap()[0];
    assert_eq!(
        cmd.join(" "),
        str_at(kamal, &["accessories", "tenant-edge", "cmd"])
    );

    // The build context leaves out the multi-gigabyte target dir and the local keys.
    let ignore = read(&deploy().join("docker/Dockerfile.dockerignore"));
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for entry in ["target", "data", ".git"] {
        assert!(
            ignored.contains(&entry),
            "Dockerfile.dockerignore leaves out {entry}"
        );
    }
}

/// Dockerfile instructions with `\` continuations joined, comments dropped.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// `key=value` lines of one section of a systemd unit (repeated keys kept in order).
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
            continue;
        }
        if !in_section || line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn values<'a>(section: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    section
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn one<'a>(section: &'a [(String, String)], key: &str) -> &'a str {
    let v = values(section, key);
    assert_eq!(v.len(), 1, "exactly one {key}= (found {v:?})");
    v[0]
}

#[test]
fn systemd_unit_reloads_through_pingoras_graceful_upgrade() {
    let unit = read(&deploy().join("systemd/tenant-edge.service"));
    let service = unit_section(&unit, "Service");
    let script = read(&deploy().join("systemd/upgrade.sh"));

    // Pingora's daemon mode, followed through its pid file.
    assert_eq!(one(&service, "Type"), "forking");
    let pid_file = one(&service, "PIDFile");
    assert!(one(&service, "ExecStart").contains(" run -d -c "));

    // ExecReload: the upgrade script, which starts `run -u` before it sends SIGQUIT.
    let reload = one(&service, "ExecReload");
    assert!(
        reload.ends_with("upgrade.sh"),
        "ExecReload= runs upgrade.sh: {reload}"
    );
    let start_new = script
        .find("run -u -d")
        .expect("upgrade.sh starts `run -u -d`");
    let quit = script.find("kill -QUIT").expect("upgrade.sh sends SIGQUIT");
    assert!(
        start_new < quit,
        "the new process must be started before the old one gets SIGQUIT"
    );

    // Non-root with exactly the capability to bind :443/:80.
    let user = one(&service, "User");
    assert!(!user.is_empty() && user != "root" && user != "0");
    assert_eq!(one(&service, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(
        one(&service, "CapabilityBoundingSet"),
        "CAP_NET_BIND_SERVICE"
    );
    assert_eq!(one(&service, "NoNewPrivileges"), "yes");
    assert_eq!(one(&service, "ProtectSystem"), "strict");
    assert_eq!(one(&service, "StateDirectory"), "tenant-edge");
    assert_eq!(one(&service, "RuntimeDirectory"), "tenant-edge");
    assert!(one(&service, "EnvironmentFile").starts_with("/etc/tenant-edge/"));
    assert!(one(&service, "LimitNOFILE").parse::<u64>().unwrap() >= 65536);

    // The config is checked before every start.
    let pre = values(&service, "ExecStartPre");
    assert!(
        pre.iter().any(|c| c.contains("check --syntax-only -c ")),
        "{pre:?}"
    );
    assert!(
        pre.iter()
            .any(|c| c.contains("tenant-edge check -c ") && !c.starts_with('-')),
        "the probes gate the start: {pre:?}"
    );
    // systemd expands $VAR in Exec lines: a literal $ must be written $$.
    for (key, value) in &service {
        if key.starts_with("Exec") {
            assert!(
                !value.replace("$$", "").contains('$'),
                "{key}={value}: an unescaped $"
            );
        }
    }

    // The paths agree with the reference config (conf/production.yaml) and the script.
    let production =
        &yaml_documents(&read(&Path::new(ROOT).join("conf/production.yaml"))).unwrap()[0];
    assert_eq!(pid_file, str_at(production, &["server", "pid_file"]));
    let env: Vec<&str> = values(&service, "Environment");
    let env_value = |name: &str| -> String {
        env.iter()
            .find_map(|e| e.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("Environment={name}=..."))
            .to_string()
    };
    assert_eq!(env_value("TENANT_EDGE_PID_FILE"), pid_file);
    assert_eq!(
        env_value("TENANT_EDGE_UPGRADE_SOCK"),
        str_at(production, &["server", "upgrade_sock"])
    );
    assert!(one(&service, "ExecStart").contains(&format!("-c {}", env_value("TENANT_EDGE_CONFIG"))));
    assert!(script.contains(&format!("${{TENANT_EDGE_PID_FILE:-{pid_file}}}")));
    assert!(script.contains(&format!(
        "${{TENANT_EDGE_UPGRADE_SOCK:-{}}}",
        env_value("TENANT_EDGE_UPGRADE_SOCK")
    )));
    assert!(
        production
            .get("server")
            .and_then(|s| s.get("user"))
            .is_none(),
        "systemd's User= drops privileges; server.user must stay unset"
    );

    // systemd waits longer than the drain before SIGKILL.
    let stop = seconds(one(&service, "TimeoutStopSec"));
    let drain = seconds(str_at(production, &["server", "grace_period"]))
        + seconds(str_at(production, &["server", "graceful_shutdown_timeout"]));
    assert!(
        stop > drain,
        "TimeoutStopSec {stop}s must exceed the drain ({drain}s)"
    );

    // systemd's own parser, where installed (paths pointed at files that exist here).
    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("tenant-edge.service");
        let script_path = deploy().join("systemd/upgrade.sh");
        fs::write(
            &copy,
            unit.replace("/usr/local/bin/tenant-edge", EDGE).replace(
                "/usr/local/lib/tenant-edge/upgrade.sh",
                script_path.to_str().unwrap(),
            ),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify:\n{text}"
        );
    } else {
        eprintln!("systemd-analyze not installed: unit syntax not verified by systemd");
    }
}

// ---------------------------------------------------------------------------------------------
// Real processes
// ---------------------------------------------------------------------------------------------

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::common::free_port()))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Running, and not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills, on drop, every process it was told about (daemons are not our children).
#[derive(Default)]
struct Reaper {
    pids: Vec<u32>,
    children: Vec<std::process::Child>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.pids {
            if alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One edge under test: internal CA, demo upstream, daemon-mode paths in a temp dir.
struct Edge {
    dir: tempfile::TempDir,
    https: SocketAddr,
    config: PathBuf,
}

impl Edge {
    fn new(reaper: &mut Reaper) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let upstream = free_addr();
        let log = fs::File::create(dir.path().join("upstream.log")).unwrap();
        reaper.children.push(
            Command::new(UPSTREAM)
                .args(["--listen", &upstream.to_string(), "--name", "app"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn demo-upstream"),
        );
        wait_until("the demo upstream", Duration::from_secs(10), || {
            TcpStream::connect(upstream).is_ok()
        });
        let https = free_addr();
        let run = dir.path().join("run");
        fs::create_dir(&run).unwrap();
        let text = format!(
            r#"data_dir: {data}
listen:
  https: {https}
  http: {http}
  metrics: {metrics}
server:
  threads: 2
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {run}/tenant-edge.pid
  upgrade_sock: {run}/upgrade.sock
allow:
  platform_domains: ["tenant.test", "*.tenant.test"]
issuer:
  internal:
    lifetime: 30d
upstreams:
  pools:
    app:
      backends: ["{upstream}"]
      health_check:
        type: http
        path: /up
        interval: 500ms
        timeout: 500ms
"#,
            data = dir.path().join("data").display(),
            http = free_addr(),
            metrics = free_addr(),
            run = run.display(),
        );
        let config = dir.path().join("tenant-edge.yml");
        fs::write(&config, text).unwrap();
        Edge { dir, https, config }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("run/tenant-edge.pid")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("run/upgrade.sock")
    }

    /// `tenant-edge run -d`, as the unit's ExecStart= does. Output goes to files, never to
    /// pipes: the daemon keeps its stderr open.
    fn start_daemon(&self, reaper: &mut Reaper) -> u32 {
        let log = fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let status = Command::new(EDGE)
            .args(["run", "-d", "-c"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .expect("run tenant-edge -d");
        assert!(status.success(), "tenant-edge run -d: {status}");
        let mut pid = 0;
        wait_until("the daemon's pid file", Duration::from_secs(20), || {
            pid = read_pid(&self.pid_file()).unwrap_or(0);
            pid != 0
        });
        reaper.pids.push(pid);
        wait_until(
            "the daemon's https listener",
            Duration::from_secs(20),
            || TcpStream::connect(self.https).is_ok(),
        );
        wait_until(
            "a first 200 through the edge",
            Duration::from_secs(20),
            || https_get(self.https).is_ok(),
        );
        pid
    }

    /// deploy/systemd/upgrade.sh with this edge's paths; (exit status, its output).
    fn upgrade(&self, config: &Path, reaper: &mut Reaper) -> (bool, String) {
        let log_path = self
            .dir
            .path()
            .join(format!("upgrade-{}.log", reaper.pids.len()));
        let log = fs::File::create(&log_path).unwrap();
        let status = Command::new("sh")
            .arg(deploy().join("systemd/upgrade.sh"))
            .env("TENANT_EDGE_BIN", EDGE)
            .env("TENANT_EDGE_CONFIG", config)
            .env("TENANT_EDGE_PID_FILE", self.pid_file())
            .env("TENANT_EDGE_UPGRADE_SOCK", self.sock())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run upgrade.sh");
        if let Some(pid) = read_pid(&self.pid_file()) {
            reaper.pids.push(pid);
        }
        (status.success(), read(&log_path))
    }
}

/// Why one request got no 200.
#[derive(Debug)]
enum Failure {
    /// No connection or no TLS session: the listener was closed or did not accept.
    Refused(String),
    /// Connected and handshaked, then closed without an answer.
    Dropped(String),
    /// An answer, but not a 200.
    Status(String),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Refused(e) => format!("refused: {e}"),
            Failure::Dropped(e) => format!("dropped: {e}"),
            Failure::Status(e) => format!("answered {e}"),
        }
    }
}

/// One HTTPS request on a new connection (SNI shop.tenant.test); Ok(status line).
fn https_get(addr: SocketAddr) -> Result<String, Failure> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| Failure::Refused(format!("connect: {e}")))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = connector
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("shop.tenant.test", tcp)
        .map_err(|e| Failure::Refused(format!("handshake: {e}")))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\nConnection: close\r\n\r\n")
        .map_err(|e| Failure::Dropped(format!("write: {e}")))?;
    let mut response = Vec::new();
    let read = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or("").to_string();
    if status.starts_with("HTTP/1.1 200") {
        Ok(status)
    } else if status.is_empty() {
        Err(Failure::Dropped(format!("no response ({read:?})")))
    } else {
        Err(Failure::Status(status))
    }
}

/// `systemctl reload` without systemd: upgrade.sh hands the listeners of a daemonized edge to
/// a new process while a client keeps opening connections; not one is refused, the pid file
/// names the new process, the old one exits. A config the new binary refuses changes nothing.
///
/// One request may go unanswered, and that is Pingora's (0.9.1) doing, not the handover's: when
/// the old process stops accepting it also drops every connection whose request has not
/// arrived yet (`pingora-proxy` `handle_new_request`, "service shutting down, dropping the
/// connection"). This client sends one request at a time, so at most one is caught.
#[test]
fn upgrade_script_swaps_the_process_without_refusing_a_connection() {
    let mut reaper = Reaper::default();
    let edge = Edge::new(&mut reaper);
    let old = edge.start_daemon(&mut reaper);

    // A broken config: refused before anything is touched.
    let broken = edge.dir.path().join("broken.yml");
    fs::write(
        &broken,
        read(&edge.config).replace("interval: 500ms", "interval: often"),
    )
    .unwrap();
    let (ok, out) = edge.upgrade(&broken, &mut reaper);
    assert!(!ok, "upgrade.sh accepted a broken config:\n{out}");
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        out.contains("upstreams.pools.app.health_check.interval"),
        "the refusal names the bad key:\n{out}"
    );
    assert_eq!(read_pid(&edge.pid_file()), Some(old));
    assert!(alive(old));
    https_get(edge.https).expect("still served after a refused upgrade");

    // Clients connect continuously, a new connection per request, through the handover.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let addr = edge.https;
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match https_get(addr) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let (ok, out) = edge.upgrade(&edge.config, &mut reaper);
    assert!(ok, "upgrade.sh failed:\n{out}");
    let new = read_pid(&edge.pid_file()).expect("a pid file after the upgrade");
    assert_ne!(new, old, "the pid file names the new process:\n{out}");
    assert!(alive(new), "the new process runs");
    assert_eq!(
        read_pid(&edge.dir.path().join("run/tenant-edge.pid.old")),
        Some(old),
        "Pingora moved the old pid file aside"
    );

    // The old process drains (5 s of overlap, then grace 1s + shutdown 1s) and exits, while
    // the load goes on.
    wait_until("the old process to exit", Duration::from_secs(30), || {
        !alive(old)
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    // server.threads 2: two single-threaded HTTPS services, each with its own socket on the
    // port; both were handed over (a socket left behind would have been closed with its
    // queued connections).
    let sockets = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", edge.https.port())])
        .output()
        .expect("ss (iproute2)");
    let sockets = String::from_utf8_lossy(&sockets.stdout).lines().count();
    assert_eq!(sockets, 2, "one listening socket per HTTPS service");
    let (served, failed) = load.join().unwrap();
    let total = served as usize + failed.len();
    let dropped = failed
        .iter()
        .filter(|f| matches!(f, Failure::Dropped(_)))
        .count();
    assert!(
        failed.iter().all(|f| matches!(f, Failure::Dropped(_))) && dropped <= 1,
        "{} of {total} requests failed during the upgrade: {:?}\n{out}",
        failed.len(),
        failed
            .iter()
            .take(5)
            .map(Failure::describe)
            .collect::<Vec<_>>()
    );
    assert!(
        served >= 20,
        "only {served} requests ran during the upgrade"
    );
    eprintln!(
        "{total} requests during the upgrade: none refused, {dropped} dropped by the old \
         process's shutdown; pid {old} -> {new}"
    );
    assert!(alive(new));
    https_get(edge.https).expect("served by the new process");
    assert!(
        !edge.sock().exists(),
        "the new process removed the upgrade socket after the transfer"
    );
}

/// The unit's gating ExecStartPre= line, run as systemd would run it (after undoing systemd's
/// `$$` escape): a taken listen port stops the start; an unreachable database does not.
#[test]
fn systemd_precheck_stops_a_start_on_a_taken_port_but_not_on_a_database_outage() {
    let unit = read(&deploy().join("systemd/tenant-edge.service"));
    let service = unit_section(&unit, "Service");
    let gate = values(&service, "ExecStartPre")
        .into_iter()
        .find(|c| c.contains("tenant-edge check -c "))
        .expect("an ExecStartPre= running the full check");
    let script = gate
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("expected /bin/sh -c '...': {gate}"))
        .replace("$$", "$");

    let dir = tempfile::tempdir().unwrap();
    let https = free_addr();
    let closed = free_addr(); // nothing listens: the database is "down"
    let config = dir.path().join("tenant-edge.yml");
    fs::write(
        &config,
        format!(
            r#"data_dir: {data}
listen:
  https: {https}
  http: {http}
allow:
  platform_domains: [example.com]
  database:
    url: postgres://tenant_edge@{closed}/app
    timeout: 1s
issuer:
  internal: {{}}
upstreams:
  pools:
    app:
      backends: ["{closed}"]
"#,
            data = dir.path().join("data").display(),
            http = free_addr(),
        ),
    )
    .unwrap();
    let script = script
        .replace("/usr/local/bin/tenant-edge", EDGE)
        .replace("/etc/tenant-edge/tenant-edge.yml", config.to_str().unwrap());
    let run = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh -c");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    // Database down, ports free: the start goes on, and the journal says what is wrong.
    let (ok, out) = run();
    assert!(ok, "a database outage must not stop the start:\n{out}");
    assert!(out.contains("error allow.database"), "{out}");
    assert!(
        out.contains(&format!("ok    listen.https {https}")),
        "{out}"
    );

    // Something (kamal-proxy, Caddy) holds the https port: the start stops here.
    let taken = TcpListener::bind(https).unwrap();
    let (ok, out) = run();
    assert!(!ok, "a taken port must stop the start:\n{out}");
    assert!(
        out.contains(&format!("error listen.https {https}")),
        "{out}"
    );
    drop(taken);
}
