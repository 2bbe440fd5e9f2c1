//! The landing zone rolls change files by rows, bytes and age, and the files' names, a function of
//! their offsets, cover every offset of the topic exactly once.

use anyhow::Result;
use weir::landing::LandingFile;
use weir_tests::TestPipeline;

/// Runs the pipeline once with `landing_keys` added to `[landing]`; returns the landing files.
async fn landing_files(t: &TestPipeline, landing_keys: &str) -> Result<Vec<LandingFile>> {
    let pipeline = t.pipeline_with(|text| {
        text.replace("[landing]\n", &format!("[landing]\n{landing_keys}\n"))
    })?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let (store, root) = weir::storage::open(&pipeline.landing.location)?;
    Ok(weir::landing::list_files(&*store, &root, "public.onlineshop").await?)
}

/// The files' offsets, in order, run from 0 to `events - 1` without gap or overlap.
fn assert_cover_once(files: &[LandingFile], events: i64) {
    let mut next = 0;
    for f in files {
        assert_eq!(f.first_offset, next, "gap or overlap at {}", f.path);
        assert!(f.last_offset >= f.first_offset);
        next = f.last_offset + 1;
    }
    assert_eq!(next, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_by_bytes_and_cover_every_offset_once() -> Result<()> {
    let t = TestPipeline::new("landing_bytes").await?;
    let events = t.load_sample().await? as i64;
    let files = landing_files(&t, "max_bytes_per_file = 50000").await?;
    // About 600 bytes of JSON per event: some 16 files of at most ~50 kB of events each.
    assert!(files.len() >= 10, "{} files", files.len());
    assert_cover_once(&files, events);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_by_age_even_while_events_keep_coming() -> Result<()> {
    let t = TestPipeline::new("landing_age").await?;
    t.db.batch_execute(
        "INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country)
         SELECT 'T' || g, '2019-12-09', 'P' || g, 'Product', 1.50, g, NULL, 'France'
         FROM generate_series(1, 20) g",
    )
    .await?;
    // An age limit of 0: every event is older than the limit once it arrives.
    let files = landing_files(&t, "max_file_age_ms = 0").await?;
    assert_eq!(files.len(), 20);
    assert_cover_once(&files, 20);
    Ok(())
}

/// A landing pass killed after writing a file but before committing its offsets leaves that file;
/// the next pass may cut the same offsets into files with other boundaries. Bronze takes each
/// offset once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_takes_overlapping_landing_files_once() -> Result<()> {
    use weir::pipeline::Stage;
    let t = TestPipeline::new("landing_overlap").await?;
    let events = t.load_sample().await? as usize;
    let pipeline = t.pipeline_with(|text| {
        text.replace("[landing]\n", "[landing]\nmax_rows_per_file = 500\n")
    })?;
    weir::pipeline::run_stages_triggered(&pipeline, &[Stage::Capture, Stage::Landing]).await?;
    let (store, root) = weir::storage::open(&pipeline.landing.location)?;
    let files = weir::landing::list_files(&*store, &root, "public.onlineshop").await?;
    let (first, second) = (&files[0], &files[1]);
    // What a crashed pass could have left: one file over the first two files' offsets.
    let mut rows = Vec::new();
    for f in [first, second] {
        let bytes = weir::storage::get(&*store, &f.path).await?.expect("landed");
        let reader =
            deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes,
            )?
            .build()?;
        for batch in reader {
            rows.push(batch?);
        }
    }
    let merged = arrow::compute::concat_batches(&rows[0].schema(), &rows)?;
    let name = format!(
        "0-{:020}-{:020}.parquet",
        first.first_offset, second.last_offset
    );
    let mut parts: Vec<_> = first.path.parts().collect();
    parts.pop();
    let overlapping = deltalake::Path::from_iter(parts).join(name);
    let mut parquet = Vec::new();
    let mut writer =
        deltalake::parquet::arrow::ArrowWriter::try_new(&mut parquet, merged.schema(), None)?;
    writer.write(&merged)?;
    writer.close()?;
    weir::storage::put(&*store, &overlapping, parquet).await?;

    weir::pipeline::run_stages_triggered(&pipeline, &[Stage::Layers]).await?;
    let bronze = weir_tests::Tables::InProcess(&pipeline)
        .rows("SELECT count(*), count(DISTINCT kafka_offset) FROM bronze")
        .await?;
    assert_eq!(bronze, vec![vec![events.to_string(), events.to_string()]]);
    Ok(())
}

/// A landing process killed after storing a file and before committing its offsets leaves that
/// file; the next process lands the same events again, cut at other boundaries, and removes it, so
/// no offset stays in two files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_a_crashed_writer_left_uncommitted_is_replaced() -> Result<()> {
    use rdkafka::consumer::{CommitMode, Consumer};
    use weir::pipeline::Stage;
    let t = TestPipeline::new("landing_leftover").await?;
    let events = t.load_sample().await? as i64;
    let rolling_at = |rows: usize| {
        // Killable: a record per batch, so that tansu serves a fetch from inside the snapshot.
        t.pipeline_with(|text| {
            weir_tests::killable(text).replace(
                "[landing]\n",
                &format!("[landing]\nmax_rows_per_file = {rows}\n"),
            )
        })
    };
    let pipeline = rolling_at(500)?;
    weir::pipeline::run_stages_triggered(&pipeline, &[Stage::Capture, Stage::Landing]).await?;
    let (store, root) = weir::storage::open(&pipeline.landing.location)?;
    let files = weir::landing::list_files(&*store, &root, "public.onlineshop").await?;
    assert_eq!(files.len(), 3);
    // The state a crash leaves: [500-999] stored, its offsets not committed, nothing after it.
    weir::storage::delete(&*store, &files[2].path).await?;
    let group = weir::transport::group_consumer(&pipeline.kafka, "landing")?;
    let mut offsets = rdkafka::TopicPartitionList::new();
    let topic = pipeline.topic_for("public.onlineshop");
    offsets.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(500))?;
    group.assign(&offsets)?;
    group.commit(&offsets, CommitMode::Sync)?;
    drop(group);

    let pipeline = rolling_at(700)?;
    weir::pipeline::run_stages_triggered(&pipeline, &[Stage::Landing]).await?;
    let files = weir::landing::list_files(&*store, &root, "public.onlineshop").await?;
    assert_cover_once(&files, events);
    assert_eq!(
        files
            .iter()
            .map(|f| (f.first_offset, f.last_offset))
            .collect::<Vec<_>>(),
        vec![(0, 499), (500, 1199), (1200, 1304)]
    );
    Ok(())
}
