//! [`MqttBroker`]: MQTT under the push layer, as pip-services' MQTT queues use it, with manual
//! acknowledgements at QoS 1.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use courier_core::backend::{MessageSink, PushBroker};
use courier_core::{Error, MessageEnvelope, MessagingCapabilities, Result};

use crate::config::{MAX_PACKET, MqttConfig};
use crate::connection::{Connection, Delivery};
use crate::{BACKEND, wire};

/// The broker half of an MQTT queue ([`MqttMessageQueue`](crate::MqttMessageQueue)).
pub struct MqttBroker {
    queue: String,
    config: MqttConfig,
    /// The MQTT client id: the one configured, or `courier` and 16 random hex digits.
    client_id: String,
    connection: tokio::sync::RwLock<Option<Connection>>,
}

impl MqttBroker {
    /// Publishes `envelopes` to the queue's topic, pipelined (see
    /// [`Connection::publish_all`](crate::connection::Connection::publish_all)); checks every
    /// one before the first goes out.
    async fn publish(&self, envelopes: &[MessageEnvelope]) -> Result<()> {
        let Some(topic) = &self.config.publish_topic else {
            return Err(Error::config(
                "topic",
                format!(
                    "`{}` is a topic filter: a queue publishes to its topic, or to its name, and neither is a topic without + or #",
                    self.config.topic
                ),
            )
            .with_backend(BACKEND)
            .with_queue(&self.queue));
        };
        let mut payloads = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let payload = wire::encode(envelope, self.config.serialize_envelope);
            if payload.len() + topic.len() + 16 > MAX_PACKET {
                return Err(Error::invalid_message(format!(
                    "a message of {} bytes is over MQTT's packet limit of 256 MiB",
                    payload.len()
                ))
                .with_backend(BACKEND)
                .with_queue(&self.queue));
            }
            payloads.push(payload);
        }
        let connection = self.connection.read().await;
        let connection = connection.as_ref().ok_or_else(|| self.not_opened())?;
        connection.publish_all(topic, payloads).await
    }

    pub(crate) fn new(queue: &str, config: MqttConfig) -> Self {
        let client_id = config.client_id.clone().unwrap_or_else(|| {
            // 23 characters of [0-9a-z]: what every MQTT 3.1.1 broker must accept.
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("courier{}", &id[..16])
        });
        MqttBroker {
            queue: queue.to_owned(),
            config,
            client_id,
            connection: tokio::sync::RwLock::new(None),
        }
    }

    /// The queue's configuration.
    pub fn config(&self) -> &MqttConfig {
        &self.config
    }

    /// The MQTT client id the queue connects with.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How many QoS 0 messages were dropped because the queue's buffer was full (0 while
    /// closed).
    pub async fn dropped(&self) -> u64 {
        self.connection
            .read()
            .await
            .as_ref()
            .map_or(0, Connection::dropped)
    }

    fn not_opened(&self) -> Error {
        Error::not_opened(&self.queue).with_backend(BACKEND)
    }
}

impl fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttBroker")
            .field("config", &self.config)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PushBroker for MqttBroker {
    type Handle = Arc<Delivery>;

    fn capabilities(&self) -> MessagingCapabilities {
        // The buffer serves receive, peek, count, clear and local locks. MQTT has no dead
        // letters, and a topic nobody subscribes to keeps nothing: spent messages go to the
        // queue's local dead-letter queue.
        MessagingCapabilities::new(true, true, true, true, true, true, true, false, true)
    }

    async fn connect(&self, _correlation_id: Option<&str>) -> Result<()> {
        let mut slot = self.connection.write().await;
        if let Some(old) = slot.take() {
            old.close().await;
        }
        // A generated client id is this queue's alone: its session ends with the queue.
        let end_session = self.config.client_id.is_none();
        *slot =
            Some(Connection::open(&self.queue, &self.config, &self.client_id, end_session).await?);
        Ok(())
    }

    async fn disconnect(&self, _correlation_id: Option<&str>) -> Result<()> {
        let connection = self.connection.write().await.take();
        if let Some(connection) = connection {
            connection.close().await;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        _correlation_id: Option<&str>,
        sink: MessageSink<Arc<Delivery>>,
    ) -> Result<()> {
        let connection = self.connection.read().await;
        let connection = connection.as_ref().ok_or_else(|| self.not_opened())?;
        connection.subscribe(sink).await
    }

    async fn unsubscribe(&self, _correlation_id: Option<&str>) -> Result<()> {
        if let Some(connection) = self.connection.read().await.as_ref() {
            connection.detach();
        }
        Ok(())
    }

    async fn send(&self, _correlation_id: Option<&str>, envelope: &MessageEnvelope) -> Result<()> {
        self.publish(std::slice::from_ref(envelope)).await
    }

    async fn send_batch(
        &self,
        _correlation_id: Option<&str>,
        envelopes: &[MessageEnvelope],
    ) -> Result<()> {
        self.publish(envelopes).await
    }

    /// Keeps the message for the next subscription of this connection (see
    /// [`Delivery`]): MQTT has no way to hand a delivery back but to reconnect.
    async fn abandon(&self, message: &MessageEnvelope, handle: Arc<Delivery>) -> Result<()> {
        if let Some(connection) = self.connection.read().await.as_ref() {
            connection.give_back(message, handle);
        }
        Ok(())
    }

    async fn complete(&self, _message: &MessageEnvelope, handle: Arc<Delivery>) -> Result<()> {
        let connection = self.connection.read().await;
        // Closed: the broker delivers it again to a session that resumes.
        if let Some(connection) = connection.as_ref() {
            connection.complete(&handle);
        }
        Ok(())
    }
}
