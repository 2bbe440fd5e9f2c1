//! Capture: PostgreSQL's WAL → Debezium-style change events in Kafka, against the real services.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weir::config::Pipeline;
use weir::source::CaptureReport;
use weir_tests::{TestPipeline, TopicRecord, eventually, read_topic};

const SHOP_TABLES: &str = "CREATE SCHEMA shop;
     CREATE TABLE shop.orders (id int PRIMARY KEY, note text, amount numeric(10,2));
     CREATE TABLE shop.items (id int PRIMARY KEY, qty int);
     CREATE TABLE shop.audit (id int PRIMARY KEY);";

/// The test's pipeline, capturing what `include` matches minus `exclude`, with extra source keys.
fn capture_pipeline(
    t: &TestPipeline,
    include: &str,
    exclude: &str,
    source_keys: &str,
) -> Result<Pipeline> {
    t.pipeline_with(|text| {
        // The base file's mode is `filtered`; a test may ask for another.
        let mode = if source_keys.contains("publication_autocreate_mode") {
            ""
        } else {
            "publication_autocreate_mode = \"filtered\""
        };
        text.replace("publication_autocreate_mode = \"filtered\"\n", "")
            .replace(
                "table_include_list = [\"public\\\\.onlineshop\"]",
                &format!(
                    "table_include_list = [{include}]\ntable_exclude_list = [{exclude}]\n{mode}\n{source_keys}"
                ),
            )
    })
}

async fn capture(pipeline: &Pipeline) -> Result<CaptureReport> {
    Ok(weir::source::run(pipeline, true, &CancellationToken::new()).await?)
}

fn topic(t: &TestPipeline, table: &str) -> Result<Vec<TopicRecord>> {
    read_topic(&t.services.kafka, &format!("{}.{table}", t.name))
}

fn op(r: &TopicRecord) -> &str {
    r.value
        .as_ref()
        .and_then(|v| v["op"].as_str())
        .unwrap_or("tombstone")
}

/// The slot's confirmed LSN (0/0 while it is still being created) and whether a capture holds it.
async fn slot(t: &TestPipeline) -> Result<Option<(String, bool)>> {
    Ok(t.db
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn::text, '0/0'), active
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&t.name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

type Capture = tokio::task::JoinHandle<weir::source::Result<CaptureReport>>;

/// Starts a continuous capture and waits until it holds its slot; cancel the token to stop it.
async fn stream_in_background(
    t: &TestPipeline,
    pipeline: &Pipeline,
) -> Result<(CancellationToken, Capture)> {
    let stop = CancellationToken::new();
    let running = {
        let (p, s) = (pipeline.clone(), stop.clone());
        tokio::spawn(async move { weir::source::run(&p, false, &s).await })
    };
    eventually(Duration::from_secs(30), || async {
        ensure!(
            slot(t).await?.is_some_and(|(_, active)| active),
            "slot not active yet"
        );
        Ok(())
    })
    .await?;
    Ok((stop, running))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_tables_stream_debezium_events_and_excluded_ones_stay_out() -> Result<()> {
    let t = TestPipeline::new("capture_events").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    t.db.batch_execute(
        "INSERT INTO shop.orders VALUES (1, 'first', 10.50), (2, 'second', 7.24);
         INSERT INTO shop.items VALUES (1, 3);
         INSERT INTO shop.audit VALUES (1);",
    )
    .await?;
    // A publication for all tables sends the excluded table's changes too: capture must drop them.
    let pipeline = capture_pipeline(
        &t,
        r#""shop\\..*""#,
        r#""shop\\.audit""#,
        "publication_autocreate_mode = \"all_tables\"\nsnapshot_max_threads = 2",
    )?;

    // The initial snapshot: `op: r`, `snapshot: true`, and `last` on the very last row.
    let report = capture(&pipeline).await?;
    assert_eq!(report.snapshot_rows, 3, "{report:?}");
    let all_tables: bool =
        t.db.query_one(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&t.name],
        )
        .await?
        .get(0);
    assert!(all_tables, "publication_autocreate_mode = all_tables");
    let orders = topic(&t, "shop.orders")?;
    assert_eq!(orders.iter().map(op).collect::<Vec<_>>(), ["r", "r"]);
    let first = orders[0].value.as_ref().context("a value")?;
    assert_eq!(orders[0].key, Some(json!({"id": 1})));
    assert_eq!(first["before"], Value::Null);
    assert_eq!(
        first["after"],
        json!({"id": 1, "note": "first", "amount": "10.50"})
    );
    let source = &first["source"];
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["name"], t.name.as_str());
    assert_eq!(source["db"], t.name.as_str());
    assert_eq!(
        (source["schema"].as_str(), source["table"].as_str()),
        (Some("shop"), Some("orders"))
    );
    assert_eq!(source["snapshot"], "true");
    assert!(
        source["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("weir-")),
        "{source}"
    );
    assert!(
        source["lsn"].is_u64() && source["ts_ms"].is_i64(),
        "{source}"
    );
    assert!(
        source.get("txId").is_some() && source["xmin"].is_null(),
        "{source}"
    );
    assert!(
        first["ts_ms"].is_i64() && first["transaction"].is_null(),
        "{first}"
    );
    // Tables are read in name order, so the snapshot ends with the last row of shop.orders.
    assert_eq!(
        orders[1].value.as_ref().context("a value")?["source"]["snapshot"],
        "last"
    );

    // Streaming: insert, update, delete (then its tombstone) and truncate, in commit order.
    for statement in [
        "INSERT INTO shop.orders VALUES (3, 'third', 1.00)",
        "UPDATE shop.orders SET note = 'changed' WHERE id = 1",
        "DELETE FROM shop.orders WHERE id = 2",
        "INSERT INTO shop.audit VALUES (2)",
        "TRUNCATE shop.items",
    ] {
        t.db.batch_execute(statement).await?;
    }
    let report = capture(&pipeline).await?;
    assert_eq!((report.snapshot_rows, report.changes), (0, 4), "{report:?}");
    let orders = topic(&t, "shop.orders")?;
    let streamed = &orders[2..];
    assert_eq!(
        streamed.iter().map(op).collect::<Vec<_>>(),
        ["c", "u", "d", "tombstone"]
    );
    let update = streamed[1].value.as_ref().context("a value")?;
    assert_eq!(update["after"]["note"], "changed");
    assert!(update["source"]["txId"].is_i64(), "{update}");
    assert_eq!(update["source"]["snapshot"], "false");
    let delete = streamed[2].value.as_ref().context("a value")?;
    assert_eq!(
        delete["before"]["id"], 2,
        "REPLICA IDENTITY DEFAULT logs the key: {delete}"
    );
    assert_eq!(delete["after"], Value::Null);
    assert_eq!(
        streamed[3].key,
        Some(json!({"id": 2})),
        "the tombstone carries the deleted key"
    );
    let lsns: Vec<u64> = streamed[..3]
        .iter()
        .filter_map(|r| r.value.as_ref()?["source"]["lsn"].as_u64())
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "LSNs grow in commit order: {lsns:?}"
    );
    let items = topic(&t, "shop.items")?;
    assert_eq!(items.iter().map(op).collect::<Vec<_>>(), ["r", "t"]);
    assert!(
        topic(&t, "shop.audit")?.is_empty(),
        "an excluded table has no events"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_transaction_streams_whole_and_confirms_the_slot_past_it() -> Result<()> {
    let t = TestPipeline::new("capture_large_tx").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    let pipeline = capture_pipeline(&t, r#""shop\\.items""#, "", "snapshot_mode = \"never\"")?;
    capture(&pipeline).await?; // creates the slot: streaming starts here

    t.db.batch_execute("INSERT INTO shop.items SELECT g, g % 7 FROM generate_series(1, 100000) g")
        .await?;
    let after_insert: String =
        t.db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
    let report = capture(&pipeline).await?;
    assert_eq!(
        (report.transactions, report.changes),
        (1, 100_000),
        "{report:?}"
    );
    let records = topic(&t, "shop.items")?;
    assert_eq!(records.len(), 100_000);
    let mut ids: Vec<i64> = records
        .iter()
        .filter_map(|r| r.key.as_ref()?["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 100_000, "every row once");
    let (confirmed, _) = slot(&t).await?.context("the slot exists")?;
    let past: bool =
        t.db.query_one(
            "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
            &[&confirmed, &after_insert],
        )
        .await?
        .get(0);
    ensure!(
        past,
        "slot confirmed at {confirmed}, before the transaction's end {after_insert}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_modes_follow_debezium() -> Result<()> {
    let t = TestPipeline::new("capture_modes").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    t.db.batch_execute("INSERT INTO shop.items VALUES (1, 1), (2, 2)")
        .await?;

    // never: no snapshot, only what changes after the slot exists.
    let never = capture_pipeline(&t, r#""shop\\.items""#, "", "snapshot_mode = \"never\"")?;
    assert_eq!(capture(&never).await?.snapshot_rows, 0);

    // always: a new snapshot at every start.
    let always = capture_pipeline(&t, r#""shop\\.items""#, "", "snapshot_mode = \"always\"")?;
    assert_eq!(capture(&always).await?.snapshot_rows, 2);
    t.db.batch_execute("INSERT INTO shop.items VALUES (3, 3)")
        .await?;
    assert_eq!(capture(&always).await?.snapshot_rows, 3);

    // initial_only: one snapshot, then no slot is left to hold WAL back, and nothing more happens.
    let t = TestPipeline::new("capture_initial_only").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    t.db.batch_execute("INSERT INTO shop.items VALUES (1, 1), (2, 2)")
        .await?;
    let initial_only = capture_pipeline(
        &t,
        r#""shop\\.items""#,
        "",
        "snapshot_mode = \"initial_only\"",
    )?;
    assert_eq!(capture(&initial_only).await?.snapshot_rows, 2);
    assert!(slot(&t).await?.is_none(), "initial_only drops its slot");
    t.db.batch_execute("INSERT INTO shop.items VALUES (3, 3)")
        .await?;
    let again = capture(&initial_only).await?;
    assert_eq!((again.snapshot_rows, again.changes), (0, 0));
    assert_eq!(topic(&t, "shop.items")?.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmet_preconditions_fail_with_errors_that_say_what_to_do() -> Result<()> {
    let t = TestPipeline::new("capture_preconditions").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    let error_of = |pipeline: Pipeline| async move {
        match capture(&pipeline).await {
            Ok(report) => bail!("expected an error, captured {report:?}"),
            Err(e) => Ok::<String, anyhow::Error>(format!("{e:#}")),
        }
    };

    t.db.batch_execute("CREATE TABLE shop.keyless (a int)")
        .await?;
    let err = error_of(capture_pipeline(&t, r#""shop\\.keyless""#, "", "")?).await?;
    assert!(
        err.contains("shop.keyless") && err.contains("REPLICA IDENTITY"),
        "{err}"
    );

    let err = error_of(capture_pipeline(&t, r#""nowhere\\..*""#, "", "")?).await?;
    assert!(err.contains("no table matches"), "{err}");

    let err = error_of(capture_pipeline(
        &t,
        r#""shop\\.items""#,
        "",
        "publication_autocreate_mode = \"disabled\"",
    )?)
    .await?;
    assert!(
        err.contains("does not exist") && err.contains("disabled"),
        "{err}"
    );

    let role = format!("{}_norepl", t.name);
    t.db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA shop TO {role}"
    ))
    .await?;
    let err = error_of(t.pipeline_with(|text| {
        text.replace("postgres://postgres@", &format!("postgres://{role}@"))
            .replace(
                "table_include_list = [\"public\\\\.onlineshop\"]",
                "table_include_list = [\"shop\\\\.items\"]",
            )
    })?)
    .await?;
    assert!(err.contains("REPLICATION"), "{err}");

    // The slot held by a running capture cannot be taken by a second one.
    let pipeline = capture_pipeline(&t, r#""shop\\.items""#, "", "")?;
    let (stop, running) = stream_in_background(&t, &pipeline).await?;
    let err = error_of(pipeline.clone()).await?;
    assert!(err.contains("in use"), "{err}");
    stop.cancel();
    running.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_captured_table_next_to_a_busy_one_keeps_the_slot_moving() -> Result<()> {
    let t = TestPipeline::new("capture_heartbeat").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    let pipeline = capture_pipeline(&t, r#""shop\\.items""#, "", "heartbeat_interval_ms = 200")?;
    let (stop, running) = stream_in_background(&t, &pipeline).await?;

    // Only the uncaptured table changes; its WAL must not pile up behind the slot.
    t.db.batch_execute("INSERT INTO shop.audit SELECT g FROM generate_series(1, 10000) g")
        .await?;
    let busy_until: String =
        t.db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
    let moved = eventually(Duration::from_secs(30), || async {
        let (confirmed, _) = slot(&t).await?.context("the slot exists")?;
        let past: bool =
            t.db.query_one(
                "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
                &[&confirmed, &busy_until],
            )
            .await?
            .get(0);
        ensure!(
            past,
            "slot still at {confirmed}, WAL written up to {busy_until}"
        );
        Ok(confirmed)
    })
    .await;
    stop.cancel();
    let report = running.await??;
    moved?;
    assert_eq!(report.changes, 0, "nothing captured: {report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_every_field_of_the_reference_designs_debezium_events_in_its_order()
-> Result<()> {
    let sample: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(
        weir_tests::repo_root().join("tests/data/debezium-1.2.5-onlineshop-sample.json"),
    )?)?;
    let t = TestPipeline::new("capture_reference").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    capture(&pipeline).await?;
    let ours = topic(&t, "public.onlineshop")?;
    let ours = ours[0].value.as_ref().context("a value")?;
    let names = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    // Stream Analytics added these three to the reference's landing files; Debezium did not.
    let added_downstream = [
        "EventProcessedUtcTime",
        "PartitionId",
        "EventEnqueuedUtcTime",
    ];
    let reference: Vec<String> = names(&sample[0])
        .into_iter()
        .filter(|k| !added_downstream.contains(&k.as_str()))
        .collect();
    assert_eq!(names(ours), reference);
    // weir adds `commit_lsn` to `source`, after Debezium's fields.
    let mut source = names(&ours["source"]);
    assert_eq!(source.pop().as_deref(), Some("commit_lsn"));
    assert_eq!(source, names(&sample[0]["source"]));
    assert_eq!(names(&ours["after"]), names(&sample[0]["after"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_enabled_json_wraps_keys_and_events_with_their_connect_schemas() -> Result<()> {
    let t = TestPipeline::new("capture_schemas").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    t.db.batch_execute("INSERT INTO shop.orders VALUES (1, 'first', 10.50)")
        .await?;
    let pipeline = capture_pipeline(&t, r#""shop\\.orders""#, "", "schemas_enable = true")?;
    capture(&pipeline).await?;
    let records = topic(&t, "shop.orders")?;
    let key = records[0].key.as_ref().context("a key")?;
    let value = records[0].value.as_ref().context("a value")?;
    let name = |suffix: &str| format!("{}.shop.orders.{suffix}", t.name);

    assert_eq!(key["payload"], json!({"id": 1}));
    assert_eq!(key["schema"]["name"], name("Key"));
    assert_eq!(
        key["schema"]["fields"],
        json!([{"type": "int32", "optional": false, "field": "id"}])
    );

    assert_eq!(value["payload"]["op"], "r");
    // The test pipelines use decimal_handling_mode = "string".
    assert_eq!(value["payload"]["after"]["amount"], "10.50");
    let schema = &value["schema"];
    assert_eq!(schema["name"], name("Envelope"));
    let fields: Vec<&str> = schema["fields"]
        .as_array()
        .context("fields")?
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["before", "after", "source", "op", "ts_ms", "transaction"]
    );
    let after = &schema["fields"][1];
    assert_eq!(after["name"], name("Value"));
    assert_eq!(
        after["fields"][1],
        json!({"type": "string", "optional": true, "field": "note"})
    );
    assert_eq!(
        after["fields"][2],
        json!({"type": "string", "optional": true, "field": "amount"})
    );
    assert_eq!(
        schema["fields"][2]["name"],
        "io.debezium.connector.postgresql.Source"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tombstones_a_delete_is_one_event() -> Result<()> {
    let t = TestPipeline::new("capture_no_tombstones").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    t.db.batch_execute("INSERT INTO shop.items VALUES (1, 1)")
        .await?;
    let pipeline = capture_pipeline(&t, r#""shop\\.items""#, "", "tombstones_on_delete = false")?;
    capture(&pipeline).await?;
    t.db.batch_execute("DELETE FROM shop.items WHERE id = 1")
        .await?;
    capture(&pipeline).await?;
    let records = topic(&t, "shop.items")?;
    assert_eq!(records.iter().map(op).collect::<Vec<_>>(), ["r", "d"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_configured_settings() -> Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let t = TestPipeline::new("capture_topic_settings").await?;
    t.db.batch_execute(SHOP_TABLES).await?;
    // The reference design's topics: compacted, lz4.
    let pipeline = t.pipeline_with(|text| {
        text.replace("table_include_list = [\"public\\\\.onlineshop\"]", "table_include_list = [\"shop\\\\.items\"]")
            .replace(
                "[landing]",
                "[kafka.topic_creation]\ncleanup_policy = \"compact\"\ncompression_type = \"lz4\"\n\n[landing]",
            )
    })?;
    capture(&pipeline).await?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &t.services.kafka)
        .create()?;
    let topic = format!("{}.shop.items", t.name);
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await?;
    let config = described.into_iter().next().context("a result")??;
    let value = |name: &str| {
        config
            .entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value("compression.type").as_deref(), Some("lz4"));
    Ok(())
}
