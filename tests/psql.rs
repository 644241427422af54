//! psql as a new user runs it: `sql-tests/psql/*.sql` is run with the real psql client against
//! an in-process server and its output compared with the `.out` file beside it.
//! `PSQL_OVERRIDE=1` rewrites the `.out` files (then read the diff before committing).

use std::path::Path;
use std::process::Command;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_scripts_match_their_expected_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<_> = std::fs::read_dir(root.join("sql-tests/psql"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty());
    for script in scripts {
        let (server, _dir) = common::start().await;
        let port = server.local_addr().port().to_string();
        let script_arg = script.strip_prefix(root).unwrap_or(&script).to_path_buf();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("psql")
                .args([
                    "-X",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "eddy",
                    "-d",
                    "eddy",
                    "-f",
                ])
                .arg(&script_arg)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("PGCONNECT_TIMEOUT", "10")
                .output()
                .expect("psql is installed (see README's set-up command)")
        })
        .await
        .unwrap();
        server.shutdown().await;
        let mut actual = String::from_utf8_lossy(&output.stdout).to_string();
        actual.push_str(&String::from_utf8_lossy(&output.stderr));
        // Ports differ between runs.
        let actual = actual.replace(
            &format!("port \"{}\"", output_port(&actual)),
            "port \"PORT\"",
        );
        let expected_path = script.with_extension("out");
        if std::env::var("PSQL_OVERRIDE").is_ok() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        assert_eq!(
            actual,
            expected,
            "psql output of {} differs",
            script.display()
        );
    }
}

fn output_port(text: &str) -> String {
    text.split("port \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("")
        .to_string()
}
