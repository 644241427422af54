//! The web dashboard (`--http-listen`) in a real browser: Debian's headless Chromium, driven
//! by playwright-core (both installed by the README's set-up command), opens the page while
//! rows stream into a join and an aggregate and a client subscribes; the test checks what the
//! page shows — each view's operators with live rates and state, the sources, the
//! subscription — and that its screenshot has the dataflow graph drawn in it.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;

mod common;
use common::connect;

fn node_modules() -> PathBuf {
    std::env::var_os("EDDY_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/eddy-node/node_modules")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_live_dataflows_and_subscriptions_in_chromium() {
    let modules = node_modules();
    assert!(
        modules.join("playwright-core").exists(),
        "{} has no `playwright-core`: run ./eddy.sh test (its set-up installs it and \
         Chromium), or set EDDY_NODE_MODULES",
        modules.display()
    );
    let (server, _dir) = common::start_with_server_options(|o| {
        o.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE auctions (id bigint PRIMARY KEY, category text);
             CREATE TABLE bids (auction bigint, price bigint) APPEND ONLY;
             CREATE MATERIALIZED VIEW totals AS
               SELECT a.category, count(*) AS bids, max(b.price) AS top
               FROM bids b JOIN auctions a ON a.id = b.auction GROUP BY a.category;
             CREATE MATERIALIZED VIEW busy AS SELECT auction, count(*) AS n FROM bids GROUP BY auction;
             INSERT INTO auctions SELECT i, 'cat' || (i % 5) FROM generate_series(1, 100) AS s(i);",
        )
        .await
        .unwrap();
    // A live subscription, and a steady stream of bids (so operators have a rate).
    let subscriber = connect(&server).await;
    let changes = subscriber
        .copy_out("COPY (SUBSCRIBE totals) TO STDOUT")
        .await
        .unwrap();
    let mut changes = Box::pin(changes);
    let writer = connect(&server).await;
    let feeding = tokio::spawn(async move {
        for round in 0i64.. {
            let sql = format!(
                "INSERT INTO bids SELECT i % 100 + 1, i * 7 % 1000 FROM generate_series({}, {}) AS s(i)",
                round * 200,
                round * 200 + 199
            );
            if writer.batch_execute(&sql).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(30), changes.next())
        .await
        .expect("the subscription delivered nothing")
        .unwrap()
        .unwrap();

    let url = format!("http://{}/", server.dashboard_addr().unwrap());
    let shot = std::env::temp_dir().join(format!("eddy-dashboard-{}.png", std::process::id()));
    let output = tokio::process::Command::new("node")
        .arg("tests/dashboard/screenshot.js")
        .args([&url, shot.to_str().unwrap(), "busy,totals", "1"])
        .env("NODE_PATH", &modules)
        .output()
        .await
        .expect("running node");
    feeding.abort();
    assert!(
        output.status.success(),
        "the browser script failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["title"], "Eddy dashboard");

    // Both views, running, each drawn as its operators joined by edges, from its sources to
    // its Materialize node, with rates and state.
    let views = seen["views"].as_array().unwrap();
    let names: Vec<&str> = views.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["busy", "totals"], "{seen:#}");
    for view in views {
        assert_eq!(view["badge"], "running", "{view:#}");
        assert!(
            view["stats"].as_str().unwrap().contains(" rows"),
            "{view:#}"
        );
        assert!(view["stats"].as_str().unwrap().contains("lag "), "{view:#}");
        let ops = view["operators"].as_array().unwrap();
        let name = |i: usize| ops[i]["name"].as_str().unwrap();
        assert!(name(0).starts_with("Source: "), "{view:#}");
        assert!(name(ops.len() - 1).starts_with("Materialize: "), "{view:#}");
        assert!(
            ops.iter()
                .any(|o| o["name"].as_str().unwrap().starts_with("HashAggregate")),
            "{view:#}"
        );
        assert!(
            view["edges"].as_u64().unwrap() >= ops.len() as u64 - 1,
            "{view:#}"
        );
        for op in ops {
            assert!(op["rate"].as_str().unwrap().starts_with("in "), "{op:#}");
            assert!(
                op["state"].as_str().unwrap().starts_with("state "),
                "{op:#}"
            );
        }
    }
    let totals = &views[1]["operators"];
    assert!(
        totals
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"].as_str().unwrap().starts_with("Join")),
        "{totals:#}"
    );
    let sources = seen["sources"].as_array().unwrap();
    assert!(
        sources
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("bids")),
        "{seen:#}"
    );
    let subscriptions = seen["subscriptions"].as_array().unwrap();
    assert_eq!(subscriptions.len(), 1, "{seen:#}");
    assert_eq!(subscriptions[0][1], "totals", "{seen:#}");

    // The screenshot: the page as drawn, with the operators' boxes in their colours.
    let png = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = png.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1280, 900));
    let channels = frame.line_size / frame.width as usize;
    let count = |rgb: [u8; 3]| {
        pixels[..frame.buffer_size()]
            .chunks(channels)
            .filter(|p| p[..3] == rgb)
            .count()
    };
    let header = count([0x10, 0x2a, 0x43]);
    let sources_fill = count([0xe7, 0xf5, 0xff]);
    let materialize_fill = count([0xeb, 0xfb, 0xee]);
    let aggregate_fill = count([0xff, 0xf4, 0xe6]);
    // Boxes of 212×66 px, most of each box's area its fill; a wide graph scrolls sideways, so
    // at least one box of each kind is in view.
    assert!(header > 1280 * 30, "header: {header} px");
    for (what, px) in [
        ("Source", sources_fill),
        ("Materialize", materialize_fill),
        ("HashAggregate", aggregate_fill),
    ] {
        assert!(px > 180 * 50, "{what} boxes: {px} px in {}", shot.display());
    }
    // Kept for a look when EDDY_DASHBOARD_SHOT names a path.
    match std::env::var_os("EDDY_DASHBOARD_SHOT") {
        Some(keep) => std::fs::rename(&shot, keep).unwrap(),
        None => std::fs::remove_file(&shot).unwrap(),
    }
    drop(changes);
    server.shutdown().await;
}
