//! Creating queues: pip-services descriptors and factories, and URI schemes for [`connect`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::connection::{check_known_options, config_from_uri};
use crate::options::{OPTION_KEYS, resolve_name};
use crate::{ConfigParams, Error, MemoryMessageQueue, MessageQueue, Result};

/// A pip-services component locator, `group:type:kind:name:version`, where `*` matches
/// anything.
///
/// ```
/// use courier_core::Descriptor;
///
/// let locator: Descriptor = "pip-services:message-queue:memory:*:1.0".parse().unwrap();
/// let wanted: Descriptor = "pip-services:message-queue:memory:orders:1.0".parse().unwrap();
/// assert!(locator.matches(&wanted));
/// assert_eq!(wanted.name(), "orders");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    parts: [String; 5],
}

impl Descriptor {
    /// Creates a descriptor from its five parts.
    pub fn new(group: &str, type_: &str, kind: &str, name: &str, version: &str) -> Self {
        Descriptor {
            parts: [group, type_, kind, name, version].map(str::to_owned),
        }
    }

    /// The group (`pip-services`).
    pub fn group(&self) -> &str {
        &self.parts[0]
    }
    /// The type (`message-queue`, `queue-factory`).
    pub fn type_(&self) -> &str {
        &self.parts[1]
    }
    /// The kind (`memory`, `sqlite`, ...).
    pub fn kind(&self) -> &str {
        &self.parts[2]
    }
    /// The name (the queue's name for `message-queue`).
    pub fn name(&self) -> &str {
        &self.parts[3]
    }
    /// The version (`1.0`).
    pub fn version(&self) -> &str {
        &self.parts[4]
    }

    /// Whether the two match, part by part, where `*` on either side matches anything.
    pub fn matches(&self, other: &Descriptor) -> bool {
        self.parts
            .iter()
            .zip(&other.parts)
            .all(|(a, b)| a == "*" || b == "*" || a.eq_ignore_ascii_case(b))
    }
}

impl FromStr for Descriptor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [g, t, k, n, v] if parts.iter().all(|p| !p.is_empty()) => {
                Ok(Descriptor::new(g, t, k, n, v))
            }
            _ => Err(Error::config(
                "descriptor",
                format!("{text:?} is not of the form group:type:kind:name:version"),
            )),
        }
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.parts.join(":"))
    }
}

/// Creates queues by name (pip-services `IMessageQueueFactory`).
pub trait MessageQueueFactory: Send + Sync {
    /// Creates a closed queue called `name`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if the factory's configuration is invalid.
    fn create_queue(&self, name: &str) -> Result<Arc<dyn MessageQueue>>;
}

/// Creates [`MemoryMessageQueue`]s, configured with the factory's configuration.
#[derive(Clone, Debug, Default)]
pub struct MemoryMessageQueueFactory {
    config: ConfigParams,
}

impl MemoryMessageQueueFactory {
    /// A factory whose queues have default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the configuration (`options.*`) of the queues it creates. Unlike pip-services
    /// Python, this never erases the name given to `create_queue`.
    pub fn configure(&mut self, config: &ConfigParams) {
        self.config = config.clone();
    }
}

impl MessageQueueFactory for MemoryMessageQueueFactory {
    fn create_queue(&self, name: &str) -> Result<Arc<dyn MessageQueue>> {
        let mut config = self.config.clone();
        config.remove("queue");
        config.set("name", name);
        Ok(Arc::new(MemoryMessageQueue::with_config(&config)?))
    }
}

/// What a [`DefaultMessagingFactory`] creates.
#[derive(Clone)]
#[non_exhaustive]
pub enum Component {
    /// A closed queue.
    Queue(Arc<dyn MessageQueue>),
    /// A queue factory.
    QueueFactory(Arc<dyn MessageQueueFactory>),
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Queue(q) => f.debug_tuple("Queue").field(&q.name()).finish(),
            Component::QueueFactory(_) => f.write_str("QueueFactory"),
        }
    }
}

/// Builds a component for a locator, given the factory's configuration.
pub type Constructor = Box<dyn Fn(&Descriptor, &ConfigParams) -> Result<Component> + Send + Sync>;

/// The pip-services messaging factory: creates components from descriptors.
///
/// Registered by default: `pip-services:message-queue:memory:*:1.0` (a
/// [`MemoryMessageQueue`] named by the descriptor) and
/// `pip-services:queue-factory:memory:*:1.0` (a [`MemoryMessageQueueFactory`]). Backends add
/// theirs with [`register`](Self::register); the `courier` facade's `DefaultMessagingFactory`
/// (which derefs to this one) has every enabled backend's.
///
/// ```
/// use courier_core::{DefaultMessagingFactory, Descriptor, MessageQueue};
///
/// let factory = DefaultMessagingFactory::new();
/// let locator: Descriptor = "pip-services:message-queue:memory:test:1.0".parse().unwrap();
/// assert!(factory.can_create(&locator).is_some());
/// let queue = factory.create_queue(&locator).unwrap();
/// assert_eq!(queue.name(), "test");
/// ```
pub struct DefaultMessagingFactory {
    registrations: Vec<(Descriptor, Constructor)>,
    config: ConfigParams,
}

impl Default for DefaultMessagingFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultMessagingFactory {
    /// A factory with the memory queue and memory queue factory registered.
    pub fn new() -> Self {
        let mut factory = DefaultMessagingFactory {
            registrations: Vec::new(),
            config: ConfigParams::new(),
        };
        factory.register(
            Descriptor::new("pip-services", "message-queue", "memory", "*", "1.0"),
            Box::new(|locator, config| {
                let config = named_config(locator, config)?;
                Ok(Component::Queue(Arc::new(MemoryMessageQueue::with_config(
                    &config,
                )?)))
            }),
        );
        factory.register(
            Descriptor::new("pip-services", "queue-factory", "memory", "*", "1.0"),
            Box::new(|_, config| {
                let mut f = MemoryMessageQueueFactory::new();
                f.configure(config);
                Ok(Component::QueueFactory(Arc::new(f)))
            }),
        );
        factory
    }

    /// Registers `constructor` for components matching `locator`; later registrations win.
    pub fn register(&mut self, locator: Descriptor, constructor: Constructor) {
        self.registrations.insert(0, (locator, constructor));
    }

    /// Sets the configuration handed to every constructor (`options.*`, connection...).
    pub fn configure(&mut self, config: &ConfigParams) {
        self.config = config.clone();
    }

    /// The registered locator that matches `locator`, if any.
    pub fn can_create(&self, locator: &Descriptor) -> Option<&Descriptor> {
        self.registrations
            .iter()
            .map(|(d, _)| d)
            .find(|d| d.matches(locator))
    }

    /// Creates the component `locator` describes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if nothing is registered for `locator`
    /// or its configuration is invalid.
    pub fn create(&self, locator: &Descriptor) -> Result<Component> {
        let (registered, constructor) = self
            .registrations
            .iter()
            .find(|(d, _)| d.matches(locator))
            .ok_or_else(|| {
                Error::config("descriptor", format!("no factory can create {locator}"))
            })?;
        // A request with a wildcard kind gets the kind it was matched with (for the check that
        // the configured address is that backend's).
        if locator.kind() == "*" && registered.kind() != "*" {
            let resolved = Descriptor::new(
                locator.group(),
                locator.type_(),
                registered.kind(),
                locator.name(),
                locator.version(),
            );
            return constructor(&resolved, &self.config);
        }
        constructor(locator, &self.config)
    }

    /// Creates the queue `locator` describes.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create), and [`ErrorKind::Config`](crate::ErrorKind::Config) if the
    /// component is not a queue.
    pub fn create_queue(&self, locator: &Descriptor) -> Result<Arc<dyn MessageQueue>> {
        match self.create(locator)? {
            Component::Queue(q) => Ok(q),
            Component::QueueFactory(_) => Err(Error::config(
                "descriptor",
                format!("{locator} describes a queue factory, not a queue"),
            )),
        }
    }
}

impl fmt::Debug for DefaultMessagingFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultMessagingFactory")
            .field(
                "locators",
                &self
                    .registrations
                    .iter()
                    .map(|(d, _)| d.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

/// `config` with the name taken from `locator` (unless it is `*`).
///
/// # Errors
///
/// [`ErrorKind::Config`](crate::ErrorKind::Config) if neither gives a name.
pub fn named_config(locator: &Descriptor, config: &ConfigParams) -> Result<ConfigParams> {
    check_kind_matches_scheme(locator.kind(), config)?;
    let mut config = config.clone();
    if locator.name() != "*" {
        config.remove("queue");
        config.set("name", locator.name());
    }
    if resolve_name(&config, None).is_none() {
        return Err(Error::config(
            "name",
            format!("{locator} does not name the queue"),
        ));
    }
    Ok(config)
}

/// The URI schemes each descriptor kind takes besides its own name (and its name with an `s`
/// for TLS): what pip-services writes in `connection.protocol`.
const SCHEME_ALIASES: [(&str, &str); 6] = [
    ("postgres", "postgresql"),
    ("mysql", "mariadb"),
    ("rabbitmq", "amqp"),
    ("rabbitmq", "amqps"),
    ("mqtt", "tcp"),
    ("mqtt", "ssl"),
];

/// `Config` if the configuration's URI (or `connection.protocol`) names another backend than
/// the descriptor's kind: a `postgres` descriptor with a `sqlite://` URI is a mistake, not a
/// SQLite queue.
fn check_kind_matches_scheme(kind: &str, config: &ConfigParams) -> Result<()> {
    let scheme = match config.get("connection.uri") {
        Some(uri) => uri.split(':').next().unwrap_or_default(),
        None => match config.get("connection.protocol") {
            Some(protocol) => protocol,
            None => return Ok(()),
        },
    };
    let (kind, scheme) = (kind.to_ascii_lowercase(), scheme.to_ascii_lowercase());
    let matches = kind == "*"
        || scheme == kind
        || scheme.strip_suffix('s') == Some(kind.as_str())
        || SCHEME_ALIASES.contains(&(kind.as_str(), scheme.as_str()));
    if matches {
        Ok(())
    } else {
        Err(Error::config(
            "connection.uri",
            format!("a `{kind}` descriptor cannot use a `{scheme}:` address"),
        ))
    }
}

/// Creates the queue a URI or [`ConfigParams`] describes, for one URI scheme.
///
/// Backends register one per scheme with [`register_scheme`]; [`connect`] and
/// [`create_from_uri`] look it up. Any `Fn(&ConfigParams) -> Result<Arc<dyn MessageQueue>>`
/// is a provider.
pub trait QueueProvider: Send + Sync {
    /// Creates a closed queue from `config` (a URI is turned into config by
    /// [`config_from_uri`](crate::backend::config_from_uri) first).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming what is invalid.
    fn create(&self, config: &ConfigParams) -> Result<Arc<dyn MessageQueue>>;
}

impl<F> QueueProvider for F
where
    F: Fn(&ConfigParams) -> Result<Arc<dyn MessageQueue>> + Send + Sync,
{
    fn create(&self, config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
        self(config)
    }
}

type Schemes = RwLock<HashMap<String, Arc<dyn QueueProvider>>>;

fn schemes() -> &'static Schemes {
    static SCHEMES: OnceLock<Schemes> = OnceLock::new();
    SCHEMES.get_or_init(|| {
        let mut map: HashMap<String, Arc<dyn QueueProvider>> = HashMap::new();
        map.insert("memory".into(), Arc::new(create_memory));
        RwLock::new(map)
    })
}

/// Makes `scheme://...` URIs create queues with `provider` (replacing any earlier provider).
pub fn register_scheme(scheme: &str, provider: Arc<dyn QueueProvider>) {
    schemes()
        .write()
        .insert(scheme.to_ascii_lowercase(), provider);
}

/// The URI schemes that have a provider, sorted.
pub fn registered_schemes() -> Vec<String> {
    let mut names: Vec<String> = schemes().read().keys().cloned().collect();
    names.sort();
    names
}

/// Creates (without opening) the queue `uri` describes.
///
/// # Errors
///
/// [`ErrorKind::Config`](crate::ErrorKind::Config) if the URI is invalid, its scheme has no
/// provider, or a parameter is unknown or invalid. Errors show the URI without its password.
pub fn create_from_uri(uri: &str) -> Result<Arc<dyn MessageQueue>> {
    let config = config_from_uri(uri)?;
    let scheme = config
        .get("connection.protocol")
        .unwrap_or_default()
        .to_owned();
    let provider = schemes().read().get(&scheme).cloned().ok_or_else(|| {
        Error::config(
            "uri",
            format!(
                "no backend for scheme `{scheme}`; registered: {} (enable the backend's feature of the `courier` crate)",
                registered_schemes().join(", ")
            ),
        )
    })?;
    provider.create(&config)
}

/// Creates and opens the queue `uri` describes: `memory://orders?lock_timeout=200`, or a scheme
/// a backend registered (the `courier` facade's `connect` registers every enabled backend).
///
/// `memory://NAME` queues live in a process-wide registry: connecting twice to one name gives
/// the same queue (the options of the first connect apply).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_core::Result<()> {
/// use courier_core::{MessageEnvelope, MessageQueue};
///
/// let producer = courier_core::connect("memory://doc-orders").await?;
/// let consumer = courier_core::connect("memory://doc-orders").await?;
/// producer.send(None, MessageEnvelope::new(None, "t", "hi")).await?;
/// assert_eq!(consumer.read_message_count().await?, 1);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`create_from_uri`], plus what the queue's `open` returns.
///
/// # Cancel safety
///
/// Cancel safe: a cancelled connect leaves nothing open behind (but a memory queue stays in
/// the registry).
pub async fn connect(uri: &str) -> Result<Arc<dyn MessageQueue>> {
    let queue = create_from_uri(uri)?;
    queue.open(None).await?;
    Ok(queue)
}

fn create_memory(config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
    check_known_options(config, &OPTION_KEYS)?;
    let host = config.get("connection.host").unwrap_or_default();
    let default_name = match config.get("connection.path") {
        Some(path) => format!("{host}/{path}"),
        None => host.to_owned(),
    };
    let name = resolve_name(config, Some(&default_name)).unwrap_or_default();
    if name.is_empty() {
        return Err(Error::config(
            "uri",
            "memory:// needs a queue name: memory://NAME",
        ));
    }
    Ok(Arc::new(MemoryMessageQueue::shared(&name, config)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn descriptor_parsing_and_matching() {
        let d: Descriptor = "pip-services:message-queue:memory:*:1.0".parse().unwrap();
        assert_eq!(d.to_string(), "pip-services:message-queue:memory:*:1.0");
        let v2: Descriptor = "pip-services:message-queue:memory:x:2.0".parse().unwrap();
        assert!(!d.matches(&v2));
        for bad in ["a:b:c:d", "a:b:c:d:e:f", "a::c:d:e"] {
            assert_eq!(
                bad.parse::<Descriptor>().unwrap_err().kind(),
                ErrorKind::Config
            );
        }
    }

    #[test]
    fn factory_creates_queue_factories_that_keep_names() {
        let mut factory = DefaultMessagingFactory::new();
        factory.configure(&ConfigParams::from_string("options.lock_timeout=10").unwrap());
        let locator: Descriptor = "pip-services:queue-factory:memory:x:1.0".parse().unwrap();
        let Component::QueueFactory(qf) = factory.create(&locator).unwrap() else {
            panic!("expected a queue factory");
        };
        assert_eq!(qf.create_queue("named").unwrap().name(), "named");
        assert!(factory.create_queue(&locator).is_err());
        let unknown: Descriptor = "pip-services:message-queue:kafka:x:1.0".parse().unwrap();
        assert!(factory.can_create(&unknown).is_none());
        assert_eq!(
            factory.create(&unknown).unwrap_err().kind(),
            ErrorKind::Config
        );
        let unnamed: Descriptor = "pip-services:message-queue:memory:*:1.0".parse().unwrap();
        assert_eq!(
            factory.create(&unnamed).unwrap_err().kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn descriptor_kind_must_match_the_uri_scheme() {
        let mut factory = DefaultMessagingFactory::new();
        factory.configure(&ConfigParams::from_tuples([(
            "connection.uri",
            "sqlite:///tmp/x.db",
        )]));
        let locator: Descriptor = "pip-services:message-queue:memory:q:1.0".parse().unwrap();
        let err = factory.create_queue(&locator).map(drop).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("`memory` descriptor"), "{err}");
        let ok = ConfigParams::from_tuples([("connection.uri", "postgresql://h/db")]);
        assert!(check_kind_matches_scheme("postgres", &ok).is_ok());
        let tls = ConfigParams::from_tuples([("connection.protocol", "amqps")]);
        assert!(check_kind_matches_scheme("rabbitmq", &tls).is_ok());
        assert!(check_kind_matches_scheme("mysql", &ok).is_err());
        let any: Descriptor = "pip-services:message-queue:*:q:1.0".parse().unwrap();
        let err = factory.create_queue(&any).map(drop).unwrap_err();
        assert!(err.to_string().contains("`memory` descriptor"), "{err}");
    }

    #[test]
    fn bad_uris_are_config_errors() {
        for uri in [
            "memory://",
            "memory://q?lock_timeout=abc",
            "memory://q?lock_timout=5",
            "nosuch://u:secretpw@h/q",
            "::::",
        ] {
            let err = create_from_uri(uri).map(|_| ()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{uri}");
            assert!(!err.to_string().contains("secretpw"), "{err}");
        }
    }
}
