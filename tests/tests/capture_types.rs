//! Capture: column types as Debezium maps them by default, and unchanged TOAST values.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weir::config::Pipeline;
use weir_tests::{TestPipeline, read_topic};

fn capture_pipeline(t: &TestPipeline, table: &str, snapshot_mode: &str) -> Result<Pipeline> {
    t.pipeline_with(|text| {
        text.replace(
            "table_include_list = [\"public\\\\.onlineshop\"]",
            &format!("table_include_list = [\"{table}\"]\nsnapshot_mode = \"{snapshot_mode}\""),
        )
        .replace("decimal_handling_mode = \"string\"\n", "")
    })
}

async fn capture(pipeline: &Pipeline) -> Result<()> {
    weir::source::run(pipeline, true, &CancellationToken::new()).await?;
    Ok(())
}

fn after_images(t: &TestPipeline, table: &str) -> Result<Vec<Value>> {
    read_topic(&t.services.kafka, &format!("{}.{table}", t.name))?
        .into_iter()
        .filter_map(|r| r.value)
        .map(|v| v.get("after").cloned().context("an after image"))
        .collect()
}

const VALUES: &str = "-32768, 2147483647, 9223372036854775807, 1.5, -2.25,
    21.47, 3.14159, 'NaN',
    'hello', 'abc', 'ab', true,
    '2019-12-09', '10:15:30.123456', '10:15:30.123', '10:15:30+02',
    '2019-12-09 10:15:30.5', '2019-12-09 10:15:30.5', '2019-12-09 10:15:30+02',
    '1 day 02:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '{\"a\": 1}',
    '\\x0102ff', 'happy', '{1,2,NULL}', '{\"a b\",c}'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_maps_as_debezium_maps_it_in_snapshot_and_stream_alike() -> Result<()> {
    let t = TestPipeline::new("capture_types").await?;
    t.db.batch_execute(&format!(
        "CREATE SCHEMA shop;
         CREATE TYPE shop.mood AS ENUM ('sad', 'happy');
         CREATE TABLE shop.all_types (
           id int PRIMARY KEY,
           i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
           n_scaled numeric(10,2), n_free numeric, n_nan numeric,
           t text, vc varchar(10), ch char(3), b boolean,
           d date, tm time, tm3 time(3), ttz timetz,
           ts timestamp, ts3 timestamp(3), tstz timestamptz,
           iv interval, u uuid, j json, jb jsonb,
           by bytea, mood shop.mood, arr int[], tarr text[]);
         INSERT INTO shop.all_types VALUES (1, {VALUES});"
    ))
    .await?;
    let pipeline = capture_pipeline(&t, "shop\\\\.all_types", "initial")?;
    capture(&pipeline).await?;
    t.db.batch_execute(&format!(
        "INSERT INTO shop.all_types VALUES (2, {VALUES});
         INSERT INTO shop.all_types (id) VALUES (3);"
    ))
    .await?;
    capture(&pipeline).await?;

    let images = after_images(&t, "shop.all_types")?;
    assert_eq!(images.len(), 3, "{images:?}");
    // Debezium's defaults: decimal.handling.mode=precise, time.precision.mode=adaptive,
    // binary.handling.mode=bytes (base64 in JSON).
    let expected = json!({
        "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807_i64, "f4": 1.5, "f8": -2.25,
        // Connect Decimal: base64 of the unscaled two's-complement integer (2147 = 0x0863).
        "n_scaled": "CGM=",
        // VariableScaleDecimal: 314159 = 0x04CB2F at scale 5.
        "n_free": {"scale": 5, "value": "BMsv"},
        "n_nan": null,
        "t": "hello", "vc": "abc", "ch": "ab ", "b": true,
        "d": 18239,
        "tm": 36_930_123_456_i64,
        "tm3": 36_930_123,
        "ttz": "08:15:30Z",
        "ts": 1_575_886_530_500_000_i64,
        "ts3": 1_575_886_530_500_i64,
        "tstz": "2019-12-09T08:15:30.000000Z",
        "iv": 93_600_000_000_i64,
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": "{\"a\": 1}", "jb": "{\"a\": 1}",
        "by": "AQL/",
        "mood": "happy",
        "arr": [1, 2, null], "tarr": ["a b", "c"],
    });
    for (image, id) in images.iter().take(2).zip([1, 2]) {
        let mut expected = expected.clone();
        expected["id"] = json!(id);
        assert_eq!(
            image,
            &expected,
            "row {id} ({})",
            if id == 1 { "snapshot" } else { "streamed" }
        );
    }
    let nulls = images[2].as_object().context("an object")?;
    assert!(
        nulls.iter().all(|(k, v)| k == "id" || v.is_null()),
        "NULL in every type: {nulls:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_is_the_debezium_placeholder_never_garbage() -> Result<()> {
    let t = TestPipeline::new("capture_toast").await?;
    t.db.batch_execute(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.docs (id int PRIMARY KEY, body text, n int);
         INSERT INTO shop.docs SELECT 1, string_agg(md5(g::text), ''), 0 FROM generate_series(1, 400) g;",
    )
    .await?;
    let pipeline = capture_pipeline(&t, "shop\\\\.docs", "initial")?;
    capture(&pipeline).await?;
    t.db.batch_execute("UPDATE shop.docs SET n = 1 WHERE id = 1; UPDATE shop.docs SET body = 'short', n = 2 WHERE id = 1")
        .await?;
    capture(&pipeline).await?;

    let images = after_images(&t, "shop.docs")?;
    assert_eq!(images.len(), 3);
    assert_eq!(
        images[0]["body"].as_str().map(str::len),
        Some(12_800),
        "the snapshot reads the whole value"
    );
    assert_eq!(
        images[1],
        json!({"id": 1, "body": "__debezium_unavailable_value", "n": 1})
    );
    assert_eq!(images[2], json!({"id": 1, "body": "short", "n": 2}));
    Ok(())
}
