//! Passwords and TLS: roles with SCRAM-SHA-256 passwords (stored as verifiers), who may manage
//! them, and psql connecting with `sslmode=require` (and channel binding) to a server with
//! `--tls-cert/--tls-key`.

use std::path::Path;
use std::process::Command;

use eddy::engine::EngineConfig;
use eddy::server::{AuthMode, Server, ServerOptions};
use tokio_postgres::NoTls;

mod common;

async fn start_secure(dir: &Path, tls: Option<(&Path, &Path)>) -> Server {
    let mut options = ServerOptions::new("127.0.0.1:0".parse().unwrap());
    options.auth = AuthMode::Scram;
    options.tls = tls.map(|(c, k)| (c.to_path_buf(), k.to_path_buf()));
    Server::start_with_options(EngineConfig::new(dir.join("data")), options)
        .await
        .unwrap()
}

async fn login(
    server: &Server,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={user} password='{}' dbname=eddy",
            server.local_addr().port(),
            password.replace('\\', "\\\\").replace('\'', "\\'")
        ),
        NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_log_in_with_scram_passwords_kept_only_as_verifiers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_secure(dir.path(), None).await;
    // No role has a password yet: nobody gets in.
    let e = login(&server, "eddy", "anything").await.unwrap_err();
    assert_eq!(code(&e), Some("28P01"), "{e}");
    server.engine().set_bootstrap_password("s3cret").unwrap();
    let admin = login(&server, "eddy", "s3cret").await.unwrap();
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN PASSWORD 'wonder land'; \
             CREATE USER bob PASSWORD 'builder'; \
             CREATE ROLE readers; \
             CREATE ROLE IF NOT EXISTS alice",
        )
        .await
        .unwrap();
    let e = admin.batch_execute("CREATE ROLE alice").await.unwrap_err();
    assert_eq!(code(&e), Some("42710"), "{e}");
    // Attributes Eddy has no use for are refused rather than ignored; their negations hold.
    let e = admin
        .batch_execute("CREATE ROLE carol CREATEDB")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e}");
    admin
        .batch_execute("CREATE ROLE carol NOCREATEDB NOCREATEROLE INHERIT; DROP ROLE carol")
        .await
        .unwrap();
    let roles = common::query_rows(
        &admin,
        "SELECT rolname, rolcanlogin, rolsuper, rolpassword FROM pg_roles ORDER BY 1",
    )
    .await;
    assert_eq!(
        roles,
        [
            ["alice", "t", "f", "********"],
            ["bob", "t", "f", "********"],
            ["eddy", "t", "t", "********"],
            ["readers", "f", "f", "********"],
        ]
    );
    // Stored as a SCRAM verifier, never as the password.
    let alice = server.engine().catalog().role("alice").unwrap();
    let stored = alice.password.as_deref().unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    assert!(!stored.contains("wonder"));

    let alice = login(&server, "alice", "wonder land").await.unwrap();
    let rows = common::query_rows(&alice, "SELECT current_user").await;
    assert_eq!(rows, [["alice"]]);
    for (user, password) in [
        ("alice", "wrong"),
        ("readers", ""),
        ("nobody", "x"),
        ("bob", "wonder land"),
    ] {
        let e = login(&server, user, password).await.unwrap_err();
        assert_eq!(code(&e), Some("28P01"), "{user}: {e}");
    }
    // Only superusers manage roles; a role may change its own password.
    for sql in [
        "CREATE ROLE mallory",
        "ALTER ROLE bob PASSWORD 'x'",
        "DROP ROLE bob",
    ] {
        let e = alice.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), Some("42501"), "{sql}: {e}");
    }
    alice
        .batch_execute("ALTER ROLE alice WITH PASSWORD 'new one'")
        .await
        .unwrap();
    assert_eq!(
        code(&login(&server, "alice", "wonder land").await.unwrap_err()),
        Some("28P01")
    );
    let e = admin.batch_execute("DROP ROLE eddy").await.unwrap_err();
    assert_eq!(code(&e), Some("2BP01"), "{e}");
    let e = admin
        .batch_execute("CREATE ROLE x IN ROLE readers")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e}");
    admin
        .batch_execute("DROP ROLE bob; DROP ROLE IF EXISTS bob; ALTER ROLE readers LOGIN")
        .await
        .unwrap();
    drop((admin, alice));
    server.shutdown().await;

    // Roles and their passwords survive a restart.
    let server = start_secure(dir.path(), None).await;
    let alice = login(&server, "alice", "new one").await.unwrap();
    let roles = common::query_rows(&alice, "SELECT rolname FROM pg_roles ORDER BY 1").await;
    assert_eq!(roles, [["alice"], ["eddy"], ["readers"]]);
    assert_eq!(
        code(&login(&server, "bob", "builder").await.unwrap_err()),
        Some("28P01")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_with_sslmode_require_and_channel_binding() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg("/CN=localhost")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (see README's set-up command)");
    assert!(made.status.success(), "{made:?}");
    let server = start_secure(dir.path(), Some((&cert, &key))).await;
    server.engine().set_bootstrap_password("s3cret").unwrap();
    let port = server.local_addr().port().to_string();
    let psql = |conninfo: String, sql: &'static str| {
        tokio::task::spawn_blocking(move || {
            Command::new("psql")
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .arg(conninfo)
                .env("PGPASSWORD", "s3cret")
                .env("PGCONNECT_TIMEOUT", "10")
                .output()
                .unwrap()
        })
    };
    let base = format!("host=127.0.0.1 port={port} user=eddy dbname=eddy");
    for extra in ["sslmode=require", "sslmode=require channel_binding=require"] {
        let out = psql(format!("{base} {extra}"), "\\conninfo").await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{extra}: {out:?}");
        assert!(
            stdout.contains("SSL connection (protocol: TLSv1.3"),
            "{stdout}"
        );
    }
    // Without TLS, a password still works (no channel binding is offered there).
    let out = psql(format!("{base} sslmode=disable"), "SELECT 42")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            Command::new("psql")
                .args(["-X", "-c", "SELECT 1"])
                .arg(format!("{base} sslmode=require"))
                .env("PGPASSWORD", "wrong")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{out:?}"
    );
    server.shutdown().await;
}
