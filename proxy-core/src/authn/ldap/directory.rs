//! Talking to the directory: opening connections (TCP, TLS or StartTLS), a
//! small pool of service-bound connections for searches, and user binds on
//! connections of their own.
//!
//! Every operation is bounded by `operationTimeout` (ldap3's own timeout
//! applies to one operation only, so each call is wrapped here), and opening
//! a connection by `connectTimeout`. A pooled connection whose operation
//! failed or timed out is discarded, so the next request opens a fresh one
//! instead of waiting on a connection that went silent.
//!
//! Every operation is timed and every failure counted by kind in the
//! directory's [`LdapCounters`], with the pool's open and busy connections.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::config::{LdapConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT};
use crate::authn::AuthnError;
use crate::counters::{LdapCounters, LdapErrorKind, LdapOperation};
use crate::credential::Secret;

/// The error every directory problem becomes: a 503 for the caller.
pub fn unavailable(error: impl std::fmt::Display) -> AuthnError {
    AuthnError::Unavailable {
        backend: "LDAP directory".into(),
        reason: error.to_string(),
    }
}

/// How an ldap3 error is counted.
fn kind_of(error: &ldap3::LdapError) -> LdapErrorKind {
    use ldap3::LdapError as E;
    match error {
        E::Timeout { .. } => LdapErrorKind::Timeout,
        E::Io { .. }
        | E::OpSend { .. }
        | E::ResultRecv { .. }
        | E::IdScrubSend { .. }
        | E::MiscSend { .. }
        | E::EndOfStream => LdapErrorKind::Unavailable,
        _ => LdapErrorKind::Protocol,
    }
}

struct Pooled {
    id: u64,
    ldap: Ldap,
    /// Which bind password it was bound with.
    password_generation: u64,
}

/// Connections to one directory.
pub struct Directory {
    url: String,
    start_tls: bool,
    tls: Arc<rustls::ClientConfig>,
    bind_dn: String,
    bind_password: ArcSwap<Secret>,
    password_generation: AtomicU64,
    connect_timeout: Duration,
    operation_timeout: Duration,
    pool: Vec<tokio::sync::Mutex<Option<Pooled>>>,
    next: AtomicUsize,
    ids: AtomicU64,
    counters: Arc<LdapCounters>,
}

impl Directory {
    /// Connections as `config` says; nothing is opened yet.
    pub fn new(config: &LdapConfig, tls: rustls::ClientConfig, bind_password: Secret) -> Self {
        let pool_size = config.pool_size.unwrap_or(2).max(1);
        Directory {
            url: config.url.clone(),
            start_tls: config.start_tls,
            tls: Arc::new(tls),
            bind_dn: config.bind_dn.clone(),
            bind_password: ArcSwap::from_pointee(bind_password),
            password_generation: AtomicU64::new(0),
            connect_timeout: config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            operation_timeout: config
                .operation_timeout
                .unwrap_or(DEFAULT_OPERATION_TIMEOUT),
            pool: (0..pool_size)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            counters: Arc::new(LdapCounters::new(pool_size)),
        }
    }

    /// Binds service connections with `password` from now on; pooled ones
    /// are re-bound when next used.
    pub fn set_bind_password(&self, password: Secret) {
        self.bind_password.store(Arc::new(password));
        self.password_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The directory's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool, latency, error and throttle counters, for metrics.
    pub fn counters(&self) -> &Arc<LdapCounters> {
        &self.counters
    }

    /// Counts a failure of `kind` and makes it the caller's 503.
    fn failed(&self, kind: LdapErrorKind, error: impl std::fmt::Display) -> AuthnError {
        self.counters.failed(kind);
        unavailable(error)
    }

    /// Runs one LDAP operation within `operationTimeout`, timed and its
    /// failure counted as `timed` (an unbind is neither).
    async fn bounded<T>(
        &self,
        what: &str,
        timed: Option<LdapOperation>,
        operation: impl Future<Output = ldap3::result::Result<T>>,
    ) -> Result<T, AuthnError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.operation_timeout, operation).await;
        if let Some(op) = timed {
            self.counters.latency(op).observe(started.elapsed());
        }
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if timed.is_none() => Err(unavailable(error)),
            Ok(Err(error)) => Err(self.failed(kind_of(&error), error)),
            Err(_) if timed.is_none() => Err(unavailable(format!("{what} timed out"))),
            Err(_) => Err(self.failed(
                LdapErrorKind::Timeout,
                format!("{what} timed out after {:?}", self.operation_timeout),
            )),
        }
    }

    /// Host and port of the URL, with LDAP's default ports.
    fn address(&self) -> Result<String, AuthnError> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| unavailable(format!("{} is not a URL", self.url)))?;
        let host = uri
            .host()
            .ok_or_else(|| unavailable(format!("{} has no host", self.url)))?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("ldaps") {
                636
            } else {
                389
            });
        Ok(format!("{host}:{port}"))
    }

    /// A new connection, TLS (or StartTLS) done, within `connectTimeout`.
    async fn connect(&self) -> Result<Ldap, AuthnError> {
        let opening = async {
            // Our own TCP connection, so that Nagle's algorithm is off: LDAP
            // exchanges small messages and would otherwise wait for delayed ACKs.
            let address = self
                .address()
                .map_err(|e| self.failed(LdapErrorKind::Protocol, e))?;
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| self.failed(LdapErrorKind::Unavailable, e))?;
            tcp.set_nodelay(true)
                .map_err(|e| self.failed(LdapErrorKind::Unavailable, e))?;
            let tcp = tcp
                .into_std()
                .map_err(|e| self.failed(LdapErrorKind::Unavailable, e))?;
            let settings = LdapConnSettings::new()
                .set_conn_timeout(self.connect_timeout)
                .set_config(self.tls.clone())
                .set_starttls(self.start_tls)
                .set_std_stream(ldap3::StdStream::Tcp(tcp));
            let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.url)
                .await
                .map_err(|e| self.failed(kind_of(&e), e))?;
            ldap3::drive!(conn);
            Ok(ldap)
        };
        tokio::time::timeout(self.connect_timeout, opening)
            .await
            .map_err(|_| {
                self.failed(
                    LdapErrorKind::Timeout,
                    format!("connect timed out after {:?}", self.connect_timeout),
                )
            })?
    }

    /// A bound service connection from the pool (opened and bound on first use
    /// or after a failure), with its slot and id.
    async fn service(&self) -> Result<(usize, u64, Ldap), AuthnError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut guard = tokio::time::timeout(
            self.connect_timeout + self.operation_timeout,
            self.pool[slot].lock(),
        )
        .await
        .map_err(|_| {
            self.failed(
                LdapErrorKind::Timeout,
                "no service connection became free in time",
            )
        })?;
        if let Some(pooled) = guard.as_mut() {
            let generation = self.password_generation.load(Ordering::Acquire);
            if !pooled.ldap.is_closed() && pooled.password_generation == generation {
                return Ok((slot, pooled.id, pooled.ldap.clone()));
            }
        }
        // A closed connection, or one bound with a replaced password: its
        // in-flight operations finish on their own handles.
        *guard = None;
        self.counters.set_open(slot, false);
        let mut ldap = self.connect().await?;
        let password_generation = self.password_generation.load(Ordering::Acquire);
        let password = self.bind_password.load_full();
        let result = self
            .bounded(
                "service account bind",
                Some(LdapOperation::ServiceBind),
                ldap.simple_bind(&self.bind_dn, password.expose()),
            )
            .await?;
        if result.rc != 0 {
            return Err(self.failed(
                LdapErrorKind::Protocol,
                format!("service account bind refused (LDAP result {})", result.rc),
            ));
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        *guard = Some(Pooled {
            id,
            ldap: ldap.clone(),
            password_generation,
        });
        self.counters.set_open(slot, true);
        Ok((slot, id, ldap))
    }

    /// Discards the pooled connection `id` if it is still in `slot`.
    async fn discard(&self, slot: usize, id: u64) {
        let mut guard = self.pool[slot].lock().await;
        if guard.as_ref().is_some_and(|p| p.id == id) {
            *guard = None;
            self.counters.set_open(slot, false);
        }
    }

    /// A subtree search as the service account; no such base is no entries.
    pub async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: Vec<String>,
    ) -> Result<Vec<SearchEntry>, AuthnError> {
        let (slot, id, mut ldap) = self.service().await?;
        let in_use = self.counters.in_use(slot);
        let result = match self
            .bounded(
                "search",
                Some(LdapOperation::Search),
                ldap.search(base, Scope::Subtree, filter, attrs),
            )
            .await
        {
            Ok(result) => result,
            Err(error) => {
                drop(in_use);
                self.discard(slot, id).await;
                return Err(error);
            }
        };
        drop(in_use);
        match result.success() {
            // Search references (referrals) are not entries: left out
            // (constructing an entry of one would panic).
            Ok((entries, _)) => Ok(entries
                .into_iter()
                .filter(|e| !e.is_ref())
                .map(SearchEntry::construct)
                .collect()),
            Err(ldap3::LdapError::LdapResult { result }) if result.rc == 32 => Ok(Vec::new()), // noSuchObject
            Err(error) => Err(self.failed(kind_of(&error), error)),
        }
    }

    /// Binds `dn` with `password` on a connection of its own; the LDAP
    /// result code (0: success).
    pub async fn user_bind(&self, dn: &str, password: &Secret) -> Result<u32, AuthnError> {
        let mut conn = self.connect().await?;
        let bind = self
            .bounded(
                "user bind",
                Some(LdapOperation::Bind),
                conn.simple_bind(dn, password.expose()),
            )
            .await?;
        // The unbind is a courtesy; the connection closes when dropped anyway.
        let _ = self.bounded("unbind", None, conn.unbind()).await;
        Ok(bind.rc)
    }
}
