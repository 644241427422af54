//! docker/'s files, run as their users run them but without a Docker engine (none runs on the
//! development machines, and no image registry is reachable from them): the binary started
//! with nothing but docker/Dockerfile's environment plus docker/compose.yaml's, checked by
//! the image's HEALTHCHECK command; compose's init script run with psql as its `eddy-init`
//! service runs it; and the queries of the Grafana dashboard it provisions, with Grafana's
//! `$__timeFilter` macro expanded as Grafana expands it, run as the provisioned data source
//! logs in.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{EddyProcess, free_port, query_rows};

fn docker_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Dockerfile's instruction `name` (the first), its continuation lines joined.
fn instruction(dockerfile: &str, name: &str) -> String {
    let mut lines = dockerfile.lines().skip_while(|l| !l.starts_with(name));
    let mut text = String::new();
    for line in lines.by_ref() {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(part) => text.push_str(part),
            None => {
                text.push_str(line);
                break;
            }
        }
    }
    assert!(!text.is_empty(), "no {name} in docker/Dockerfile");
    text[name.len()..].trim().to_string()
}

/// `KEY: value` lines of the compose file whose key starts with `EDDY_`, with `${VAR:-default}`
/// read as its default.
fn compose_environment(compose: &str) -> Vec<(String, String)> {
    compose
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("EDDY_"))
        .map(|(k, v)| {
            let v = match v.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                Some(var) => var.split_once(":-").map_or("", |(_, d)| d),
                None => v,
            };
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A provisioning file's `key: value`.
fn yaml_value(yaml: &str, key: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in the data source"))
        .to_string()
}

/// What Grafana's PostgreSQL data source sends for `$__timeFilter(column)` over the last
/// `minutes` (RFC 3339 in UTC).
fn expand_time_filter(sql: &str, minutes: i64) -> String {
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::minutes(minutes);
    let format =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let mut out = sql.to_string();
    while let Some(start) = out.find("$__timeFilter(") {
        let open = start + "$__timeFilter(".len();
        let close = open + out[open..].find(')').unwrap();
        let column = out[open..close].to_string();
        out.replace_range(
            start..=close,
            &format!("{column} BETWEEN '{}' AND '{}'", format(from), format(to)),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_compose_settings_serve_the_provisioned_grafana_dashboard() {
    let dockerfile = docker_file("Dockerfile");
    let compose = docker_file("compose.yaml");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let http_port = free_port();

    // The image's ENV, then the compose service's, with the container's paths and ports
    // replaced by the test's.
    let mut env: Vec<(String, String)> = instruction(&dockerfile, "ENV")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    env.extend(compose_environment(&compose));
    let setting = |env: &[(String, String)], key: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("docker/ sets no {key}"))
    };
    assert_eq!(setting(&env, "EDDY_LISTEN"), "0.0.0.0:5544");
    assert_eq!(setting(&env, "EDDY_DATA_DIR"), "/data");
    let password = setting(&env, "EDDY_PASSWORD");
    for (key, value) in &mut env {
        match key.as_str() {
            "EDDY_LISTEN" => *value = format!("0.0.0.0:{port}"),
            "EDDY_HTTP_LISTEN" => *value = format!("127.0.0.1:{http_port}"),
            "EDDY_DATA_DIR" => *value = dir.path().join("data").display().to_string(),
            _ => {}
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    env.push(("PATH".into(), path));
    let log_path: PathBuf = dir.path().join("eddy.log");
    let _server =
        EddyProcess::spawn_with_env(port, &env, std::fs::File::create(&log_path).unwrap());

    // The image's HEALTHCHECK command turns healthy.
    let healthcheck = instruction(&dockerfile, "HEALTHCHECK");
    let command = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK … CMD command")
        .1
        .replace("-p 5544", &format!("-p {port}"));
    let started = Instant::now();
    loop {
        let status = Command::new("sh").arg("-c").arg(&command).status().unwrap();
        if status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "`{command}` still fails after 60 s; the log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // compose's eddy-init: psql runs init.sql with the password; on every `up` (it is
    // idempotent).
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/init.sql");
    for _ in 0..2 {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "eddy",
                "-d",
                "eddy",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&init)
            .env("PGPASSWORD", &password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init.sql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // On 0.0.0.0 a client without the password is refused.
    let refused = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=eddy dbname=eddy"),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(refused.is_err(), "a login without a password was let in");

    // Grafana logs in as its provisioned data source says, and runs each panel's query.
    let datasource = docker_file("grafana/provisioning/datasources/eddy.yaml");
    assert_eq!(yaml_value(&datasource, "sslmode"), "disable");
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user={} dbname={} password={password}",
            yaml_value(&datasource, "user"),
            yaml_value(&datasource, "database"),
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let dashboard: serde_json::Value =
        serde_json::from_str(&docker_file("grafana/dashboards/eddy-nexmark.json")).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["rawSql"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(queries.len(), 3);
    for sql in &queries {
        // The source generates events from its start: every panel has rows within seconds.
        let sql = expand_time_filter(sql, 5);
        let started = Instant::now();
        loop {
            let rows = query_rows(&client, &sql).await;
            if !rows.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{sql}: no rows after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // EDDY_LOG_FORMAT=json: every line of the log is a JSON object with a level and message.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.lines().count() > 0);
    for line in log.lines() {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            record["level"].is_string() && record["message"].is_string(),
            "{line}"
        );
    }
}
