//! `tide bench limits` measures every limit and reports it as JSON a script can read.

use std::process::Command;

#[test]
fn limits_are_measured_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tide"))
        .args(["bench", "limits", "--mib", "8", "--output", "json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "disk_write_mib_s",
        "disk_write_fsync_mib_s",
        "disk_read_cold_mib_s",
        "loopback_tcp_mib_s",
        "loopback_sendfile_mib_s",
    ] {
        let rate = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"));
        assert!(rate > 0.0 && rate.is_finite(), "{key} = {rate}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the test file is removed");
    let bad = Command::new(env!("CARGO_BIN_EXE_tide"))
        .args(["bench", "limits", "--mib", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error:"));
}
