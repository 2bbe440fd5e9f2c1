//! Kafka transport, through librdkafka: any Kafka-protocol broker (Apache Kafka, Event Hubs, Redpanda).
//!
//! The producer is idempotent with `acks=all`, so a change is acknowledged only once the broker has
//! it durably and retries never duplicate it within a session. Consumers belong to the pipeline's
//! consumer group, never auto-commit, and commit an offset only after the consuming stage's output
//! is durable: downstream delivery is at-least-once and stages deduplicate by offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("kafka at {servers}: {action}: {source}")]
    Kafka {
        servers: String,
        action: String,
        source: KafkaError,
    },
    #[error("kafka at {servers}: creating topic {topic}: {message}")]
    CreateTopic {
        servers: String,
        topic: String,
        message: String,
    },
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.options {
        config.set(k, v);
    }
    config
}

fn kafka_err(
    kafka: &KafkaConfig,
    action: impl Into<String>,
) -> impl FnOnce(KafkaError) -> TransportError {
    let servers = kafka.bootstrap_servers.clone();
    let action = action.into();
    move |source| TransportError::Kafka {
        servers,
        action,
        source,
    }
}

/// Creates the topics that do not exist yet, with the `[kafka.topic_creation]` settings.
pub async fn ensure_topics(kafka: &KafkaConfig, topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka)
        .create()
        .map_err(kafka_err(kafka, "creating admin client"))?;
    let settings = &kafka.topic_creation;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut topic = NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            if let Some(policy) = &settings.cleanup_policy {
                topic = topic.set("cleanup.policy", policy);
            }
            if let Some(compression) = &settings.compression_type {
                topic = topic.set("compression.type", compression);
            }
            topic
        })
        .collect();
    let results = admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .map_err(kafka_err(kafka, "creating topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions = settings.partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TransportError::CreateTopic {
                    servers: kafka.bootstrap_servers.clone(),
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// An idempotent producer of change events.
#[derive(Clone)]
pub struct ChangeProducer {
    producer: FutureProducer,
    servers: Arc<str>,
}

impl ChangeProducer {
    pub fn new(kafka: &KafkaConfig) -> Result<Self> {
        let mut config = base_config(kafka);
        // Defaults chosen for lossless CDC; anything in [kafka.options] wins over them.
        for (k, v) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "300000"),
        ] {
            if !kafka.options.contains_key(k) {
                config.set(k, v);
            }
        }
        let producer = config
            .create()
            .map_err(kafka_err(kafka, "creating producer"))?;
        Ok(Self {
            producer,
            servers: Arc::from(kafka.bootstrap_servers.as_str()),
        })
    }

    /// Connects to the brokers leading `topics` before the first event is queued.
    ///
    /// An idempotent producer takes no event until it has its producer id, and librdkafka only asks
    /// for one once a broker connection is up, retrying on a timer: without this the first events
    /// of a run wait about a second.
    pub async fn connect(&self, topics: &[String]) -> Result<()> {
        let producer = self.producer.clone();
        let topics = topics.to_vec();
        let servers = self.servers.clone();
        let connected = tokio::task::spawn_blocking(move || {
            topics.iter().try_for_each(|topic| {
                producer
                    .client()
                    .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                    .map(drop)
                    .map_err(|source| TransportError::Kafka {
                        servers: servers.to_string(),
                        action: format!("reading metadata of {topic}"),
                        source,
                    })
            })
        })
        .await;
        connected.unwrap_or(Ok(()))
    }

    /// Queues one event; the returned future resolves once the broker acknowledged it.
    pub fn send(
        &self,
        topic: &Arc<str>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> impl Future<Output = Result<()>> + Send + use<> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        // A full local queue is back-pressure: wait for deliveries to drain it. Retrying right here
        // (not in the returned future) keeps records in the order they were handed to us.
        let mut queued = self.producer.send_result(record);
        while let Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) =
            queued
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
            queued = self.producer.send_result(returned);
        }
        // The record borrows its key and value; keep only the error, so the future owns everything.
        let queued = queued.map_err(|(e, _record)| e);
        // Shared, not copied: this runs for every event.
        let servers = self.servers.clone();
        let topic = topic.clone();
        async move {
            let err = |source| TransportError::Kafka {
                servers: servers.to_string(),
                action: format!("producing to {topic}"),
                source,
            };
            match queued {
                Err(e) => Err(err(e)),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(err(e)),
                    Err(_) => Err(err(KafkaError::Canceled)),
                },
            }
        }
    }
}

/// A consumer in the pipeline's group (see [`group_consumer`]).
pub type GroupConsumer = StreamConsumer<RebalanceLog>;

/// Logs each partition assignment and revocation of a group consumer: what to read first when a
/// process consumes nothing because its group never handed it a partition.
pub struct RebalanceLog;

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |list: &rdkafka::TopicPartitionList| {
            list.elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(partitions = %partitions(list), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                tracing::info!(partitions = %partitions(list), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "the group's rebalance failed"),
        }
    }
}

/// A consumer in the pipeline's group, committing offsets only when told to.
pub fn group_consumer(kafka: &KafkaConfig, group_suffix: &str) -> Result<GroupConsumer> {
    let mut config = base_config(kafka);
    config
        .set("group.id", format!("{}-{group_suffix}", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Short fetch waits keep an idle check from mistaking a slow fetch for the end of a
        // partition, and bound how long a new change waits on a broker that answers a fetch only
        // at its deadline (tansu does) rather than when data arrives (Kafka does).
        .set("fetch.wait.max.ms", "20")
        // librdkafka prefetches up to 64 MiB per partition by default: held in memory whenever
        // landing falls behind, on top of the buffer it is filling. 16 MiB keeps the fetches flowing.
        .set("queued.max.messages.kbytes", "16384");
    config
        .create_with_context(RebalanceLog)
        .map_err(kafka_err(kafka, "creating consumer"))
}

/// The current end of each partition of `topic` (the offset the next record will get).
pub fn high_watermarks(
    consumer: &GroupConsumer,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(kafka_err(kafka, format!("reading metadata of {topic}")))?;
    let mut out = BTreeMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)
                .map_err(kafka_err(
                    kafka,
                    format!("reading watermarks of {topic}/{}", p.id()),
                ))?;
            out.insert(p.id(), high);
        }
    }
    Ok(out)
}
