//! Several writers on the same Delta tables, as several weir processes sharing a pipeline are:
//! each layer's commit races the others through Delta's optimistic concurrency, and whichever
//! loses a race finds its work done or redoes it on the new version; nothing is applied twice.

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use weir_tests::{TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_layer_writers_and_maintenance_leave_one_correct_silver_and_gold() -> Result<()> {
    let t = TestPipeline::new("concurrent_writers").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    let host = weir::wasm::WasmHost::new(pipeline.wasm)?;
    let mut writers = [
        weir::lakehouse::Layers::load(&host, &pipeline)?,
        weir::lakehouse::Layers::load(&host, &pipeline)?,
        weir::lakehouse::Layers::load(&host, &pipeline)?,
    ];
    let never = CancellationToken::new();
    for round in 0..3 {
        if round > 0 {
            t.db.batch_execute(&format!(
                "UPDATE onlineshop SET quantity = quantity + {round} WHERE id % 4 = {round};
                 DELETE FROM onlineshop WHERE id % 25 = {round};"
            ))
            .await?;
        }
        weir::source::run(&pipeline, true, &never).await?;
        weir::landing::run(&pipeline, true, &never).await?;
        let [a, b, c] = &mut writers;
        let (ra, rb, rc, rm) = tokio::join!(
            a.run_once(&pipeline),
            b.run_once(&pipeline),
            c.run_once(&pipeline),
            weir::lakehouse::maintain(&pipeline, &pipeline.maintenance),
        );
        ra?;
        rb?;
        rc?;
        rm?;
        assert_silver_equals_source(&t, &pipeline).await?;
        assert_gold_equals_group_by(&t, &pipeline).await?;
    }
    Ok(())
}
