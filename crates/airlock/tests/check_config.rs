//! `airlock check-config` checks everything the gateway would refuse at
//! start, without starting anything: policy, connectors, and masking and
//! identity too. Each broken configuration beside the same one intact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::process::Command;

const BASE: &str = include_str!("../src/default.toml");

/// Runs `check-config` on BASE plus `extra`: (success, output).
fn check(extra: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.toml");
    std::fs::write(&path, format!("{BASE}\n{extra}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env_remove("AIRLOCK_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was started or created: no data directory, no key.
    assert!(!dir.path().join("airlock-data").exists(), "{text}");
    (out.status.success(), text)
}

#[test]
fn masking_and_identity_mistakes_are_found_without_starting() {
    let (ok, out) = check("");
    assert!(ok && out.contains(": OK ("), "{out}");
    let good_custom = "[[masking.custom]]\nname = \"employee_id\"\nregex = \"EMP-[0-9]{6}\"\n";
    let (ok, out) = check(good_custom);
    assert!(ok, "{out}");
    let (ok, out) = check("[[masking.custom]]\nname = \"employee_id\"\nregex = \"EMP-[0-9\"\n");
    assert!(!ok && out.contains("employee_id"), "{out}");
    let (ok, out) = check("[[masking.profiles]]\nname = \"p\"\ndetectors = [\"emial\"]\n");
    assert!(!ok && out.contains("emial"), "{out}");
    let oidc =
        |url: &str| format!("[[identity.oidc]]\nissuer = \"{url}\"\naudience = \"airlock\"\n");
    let (ok, out) = check(&oidc("https://idp.example.com"));
    assert!(ok, "{out}");
    let (ok, out) = check(&oidc("http://idp.example.com"));
    assert!(!ok && out.contains("http://idp.example.com"), "{out}");
}
