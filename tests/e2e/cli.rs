//! Start-up errors of the real binaries: clear messages and a failing exit
//! status, never a panic.

use std::path::Path;
use std::process::Command;

const COORD: &str = env!("CARGO_BIN_EXE_e2e-fedmesh-coordinator");
const NODE: &str = env!("CARGO_BIN_EXE_e2e-fedmesh-node");

/// Runs a binary expecting failure; returns stderr.
fn fails(bin: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{bin} {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_configs_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("c.toml"),
        "listen = \"127.0.0.1:0\"\ndata_dir = \"x\"\n[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[tenants]]\nname = \"acme\"\nquorom = 2\n",
    )
    .unwrap();
    let e = fails(COORD, &["serve", "--config", "c.toml"], d);
    assert!(e.contains("quorom") && e.contains("line 9"), "{e}");

    std::fs::write(
        d.join("n.toml"),
        "data_dir = \"x\"\nwindow_ms = \"ten\"\n[source]\nkind = \"synthetic\"\ncontainers = []\n",
    )
    .unwrap();
    let e = fails(NODE, &["run", "--config", "n.toml"], d);
    assert!(e.contains("window_ms") && e.contains("line 2"), "{e}");

    // Semantic errors are reported together.
    std::fs::write(
        d.join("n2.toml"),
        "data_dir = \"x\"\nwindow_ms = 0\n[detector]\nfalse_alarm_rate = 2.0\n[source]\nkind = \"synthetic\"\ncontainers = []\n",
    )
    .unwrap();
    let e = fails(NODE, &["run", "--config", "n2.toml"], d);
    for needle in ["window_ms", "false_alarm_rate", "containers"] {
        assert!(e.contains(needle), "missing {needle}: {e}");
    }
    let e = fails(NODE, &["run", "--config", "missing.toml"], d);
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn missing_certificates_and_data_dirs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("c.toml"),
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[tls]\nca_cert = \"pki/ca.crt\"\ncert = \"pki/coordinator.crt\"\nkey = \"pki/coordinator.key\"\n[[tenants]]\nname = \"acme\"\n",
    )
    .unwrap();
    let e = fails(COORD, &["serve", "--config", "c.toml"], d);
    assert!(
        e.contains("pki/ca.crt") && e.contains("CA certificate"),
        "{e}"
    );

    std::fs::write(
        d.join("n.toml"),
        "data_dir = \"data\"\n[coordinator]\nendpoint = \"127.0.0.1:1\"\n[tls]\nca_cert = \"pki/ca.crt\"\ncert = \"pki/n1.crt\"\nkey = \"pki/n1.key\"\n[source]\nkind = \"synthetic\"\ncontainers = [ { id = \"w\", profile = \"web\" } ]\n",
    )
    .unwrap();
    let e = fails(NODE, &["run", "--config", "n.toml"], d);
    // The node reads its certificate, key and CA together; the error names
    // the first file it could not read.
    assert!(
        e.contains("cannot read") && (e.contains("pki/n1.crt") || e.contains("pki/ca.crt")),
        "{e}"
    );

    let e = fails(COORD, &["audit-verify", "--data-dir", "nope"], d);
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    let e = fails(
        NODE,
        &[
            "inspect",
            "--data-dir",
            "nope",
            "--ca-cert",
            "x",
            "--tenant",
            "acme",
        ],
        d,
    );
    assert!(e.contains("does not exist"), "{e}");
    // Issuing without a CA.
    let e = fails(
        COORD,
        &[
            "ca", "issue", "--dir", "pki", "--tenant", "acme", "--node", "n1",
        ],
        d,
    );
    assert!(e.contains("ca init"), "{e}");
    // Invalid names are refused before anything is written.
    let out = Command::new(COORD)
        .args(["ca", "init", "--dir", "pki"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = fails(
        COORD,
        &[
            "ca", "issue", "--dir", "pki", "--tenant", "Acme!", "--node", "n1",
        ],
        d,
    );
    assert!(e.contains("Acme!"), "{e}");
    // Refuses to overwrite an existing CA.
    let e = fails(COORD, &["ca", "init", "--dir", "pki"], d);
    assert!(e.contains("refusing"), "{e}");
}
