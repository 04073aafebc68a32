//! The app's data tables as the official client reaches them:
//! `from anvil.tables import app_tables` over the uplink (the
//! `anvil.private.tables.v2.*` functions and transactions), on top of the
//! tables in the embedded database (`storage::tables`).
//!
//! Each call runs on a blocking thread (SQLite blocks) and its answer is
//! queued to the calling connection like any reply. Who may do what is
//! checked on every call: server-privilege uplinks may do everything in
//! their app; client keys and browser pages get what each table's
//! `client_access` allows. The wire contract is in
//! docs/tables-protocol.md; what works is in docs/tables.md.

mod caps;
mod media;
mod plain;
mod rpc;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolink_proto::encode;
use ferrolink_proto::error_type;
use ferrolink_proto::message::{Call, Privilege};

use crate::calls::peer::{Outbound, Peer};
use crate::state::ServerState;
use crate::storage::tables::{ClientAccess, TableMeta, TableTransaction};
use crate::storage::{Store, StoreError};

pub(crate) use caps::Caps;
pub(crate) use media::{MediaIn, declared as declared_media};

/// Error type the client raises as `anvil.tables.TableError`.
const TABLE_ERROR: &str = "anvil.tables.TableError";
/// … as `anvil.tables.TransactionConflict` (the client retries).
const CONFLICT: &str = "anvil.tables.TransactionConflict";
/// … as `anvil.tables.RowDeleted`.
const ROW_DELETED: &str = "anvil.tables.RowDeleted";

/// Table calls one connection may have running or waiting at once.
const PER_CONNECTION: u64 = 64;
/// Table calls running at once, server-wide (blocking threads).
const WORKERS: usize = 8;
/// Transactions one connection may hold open.
const TRANSACTIONS_PER_CONNECTION: usize = 16;
/// Transactions open at once, server-wide.
const TRANSACTIONS: usize = 256;
/// How long a transaction may stay open. While it holds SQLite's write
/// lock, other writers wait, so it is kept short; past it the transaction
/// is rolled back and its next call fails with `TransactionConflict`.
pub(crate) const TRANSACTION_LIFETIME: Duration = Duration::from_secs(10);

/// A refusal: the error type the client raises, and the message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) ty: &'static str,
    pub(crate) message: String,
}

pub(crate) fn table_error(message: &str) -> Failure {
    Failure {
        ty: TABLE_ERROR,
        message: message.to_owned(),
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self {
                ty: CONFLICT,
                message: e.to_string(),
            },
            StoreError::BadTable(m) => Self {
                ty: TABLE_ERROR,
                message: m,
            },
            StoreError::NoSuchColumn(m) => Self {
                ty: "anvil.tables.NoSuchColumnError",
                message: m,
            },
            e => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "a data table call failed");
                Self {
                    ty: error_type::INTERNAL,
                    message: "the server's database failed; the server log says why".to_owned(),
                }
            }
        }
    }
}

/// A transaction held across calls, by connection and call stack.
enum Txn {
    Open {
        tx: Box<TableTransaction>,
        /// A call in it lost a race: it can only be rolled back.
        conflicted: bool,
    },
    /// Rolled back by the server (too long open): its calls fail with a
    /// conflict until the client closes it.
    Expired,
}

type TxnKey = (u64, Box<str>);
/// An open transaction: its number (to tell it from a later one under
/// the same key) and its state.
type Held = (u64, Arc<Mutex<Txn>>);

/// The data tables service of a server.
pub(crate) struct Service {
    caps: Caps,
    transactions: Mutex<HashMap<TxnKey, Held>>,
    next_txn: AtomicU64,
    workers: Arc<tokio::sync::Semaphore>,
}

/// Who is calling, for the access checks.
pub(crate) struct Who {
    app: Arc<str>,
    /// A server-privilege uplink: may do everything in its app.
    server: bool,
    /// A browser page with a logged-in user.
    user: bool,
}

/// What a caller needs to be allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Read,
    Add,
    Write,
}

impl Who {
    /// What this caller may do with `meta`.
    pub(crate) fn access(&self, meta: &TableMeta) -> ClientAccess {
        if self.server {
            ClientAccess::Write
        } else if meta.client_login && !self.user {
            ClientAccess::None
        } else {
            meta.client_access
        }
    }

    /// Refuses unless this caller may do `need` with `meta`.
    pub(crate) fn check(&self, meta: &TableMeta, need: Need) -> Result<(), Failure> {
        let access = self.access(meta);
        let ok = match need {
            Need::Read => access >= ClientAccess::Read,
            Need::Add => matches!(access, ClientAccess::Add | ClientAccess::Write),
            Need::Write => access == ClientAccess::Write,
        };
        if ok {
            return Ok(());
        }
        Err(Failure {
            ty: error_type::PERMISSION_DENIED,
            message: format!(
                "this connection may not {} table \"{}\" (its client access is {}; change it with `ferrolink table set --client`)",
                match need {
                    Need::Read => "read",
                    Need::Add => "add rows to",
                    Need::Write => "change",
                },
                meta.name,
                meta.client_access.as_str()
            ),
        })
    }
}

pub(crate) fn row_deleted() -> Failure {
    Failure {
        ty: ROW_DELETED,
        message: "This row has been deleted".to_owned(),
    }
}

/// A call, owned, on its way to a blocking thread.
pub(crate) struct Job {
    /// The caller's id, as a JSON literal.
    pub(crate) id_literal: String,
    pub(crate) command: String,
    pub(crate) args: String,
    pub(crate) kwargs: String,
    pub(crate) objects: Option<String>,
    txn: TxnKey,
    /// The bytes of the call's media objects, by media id.
    pub(crate) media: HashMap<String, Vec<u8>>,
}

impl Job {
    pub(crate) fn new(peer: &Peer, call: &Call<'_>) -> Self {
        Self {
            id_literal: call.id.literal().to_owned(),
            command: call.command.clone().into_owned(),
            args: call.args.get().to_owned(),
            kwargs: call.kwargs.get().to_owned(),
            objects: call.objects.map(|o| o.get().to_owned()),
            txn: (peer.id, call.call_stack_id.as_deref().unwrap_or("").into()),
            media: HashMap::new(),
        }
    }
}

/// What a table call answers: the response, its `objects`, and a file
/// sent as media in place of the response.
pub(crate) struct Answer {
    pub(crate) response: serde_json::Value,
    pub(crate) objects: Vec<serde_json::Value>,
    pub(crate) media: Option<Media>,
}

/// A file answered as media (`to_csv`).
pub(crate) struct Media {
    pub(crate) name: String,
    pub(crate) mime: String,
    pub(crate) bytes: Vec<u8>,
}

/// Media goes out in chunks of this size, as the official clients send it.
const CHUNK: usize = 65536;

impl Answer {
    fn new(response: serde_json::Value, objects: Vec<serde_json::Value>) -> Self {
        Self {
            response,
            objects,
            media: None,
        }
    }

    fn plain(response: serde_json::Value) -> Self {
        Self::new(response, Vec::new())
    }

    /// The reply to call `id` (a JSON literal): its frame, or, with media,
    /// the frame and the media's chunks.
    fn encode(self, id: &str) -> Outbound {
        let mut frame = String::new();
        let Some(media) = self.media else {
            let objects = (!self.objects.is_empty())
                .then(|| serde_json::Value::Array(self.objects).to_string());
            encode::reply_response(
                &mut frame,
                id,
                &self.response.to_string(),
                objects.as_deref(),
            );
            return Outbound::Frame(frame);
        };
        let entry = serde_json::json!([{
            "type": ["DataMedia"],
            "path": ["response"],
            "id": "m0",
            "mime-type": media.mime,
            "name": media.name,
        }]);
        encode::reply_response(&mut frame, id, "null", Some(&entry.to_string()));
        let pieces: Vec<&[u8]> = if media.bytes.is_empty() {
            vec![&[]]
        } else {
            media.bytes.chunks(CHUNK).collect()
        };
        let last = pieces.len() - 1;
        let chunks = pieces
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                (
                    format!(
                        "{{\"type\":\"CHUNK_HEADER\",\"requestId\":{id},\"mediaId\":\"m0\",\"chunkIndex\":{i},\"lastChunk\":{}}}",
                        i == last
                    ),
                    bytes.to_vec(),
                )
            })
            .collect();
        Outbound::Media(frame, chunks)
    }
}

/// Whether `command` is a data tables call: the official client's, or
/// ferrolink's plain-JSON one (`ferrolink.tables.*`, for the Rust and
/// browser clients and devices that cannot take `objects`).
pub(crate) fn handles(command: &str) -> bool {
    command.starts_with("anvil.private.tables.")
        || command.starts_with(plain::PREFIX)
        || command == FETCH_MEDIA
}

/// How the official client reads a media value it got as `LazyMedia`.
const FETCH_MEDIA: &str = "anvil.private.fetch_lazy_media";

/// The answer to `anvil.private.get_client_config(path)` for the tables
/// service: v2 tables (what this server implements).
pub(crate) fn client_config(args: &str) -> Option<&'static str> {
    (serde_json::from_str::<(String,)>(args).ok()?.0 == "/runtime/services/tables.yml")
        .then_some("{\"enable_v2\":true}")
}

impl Service {
    pub(crate) fn new(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            caps: Caps::new(store.secret("tables-capabilities")?),
            transactions: Mutex::default(),
            next_txn: AtomicU64::new(1),
            workers: Arc::new(tokio::sync::Semaphore::new(WORKERS)),
        })
    }

    /// Takes a table call from `peer`: it runs on a blocking thread and
    /// its answer is queued to `peer`.
    pub(crate) fn submit(state: &Arc<ServerState>, peer: &Arc<Peer>, call: &Call<'_>) {
        Self::submit_job(state, peer, Job::new(peer, call));
    }

    /// Runs `job` on a blocking thread and queues its answer to `peer`.
    pub(crate) fn submit_job(state: &Arc<ServerState>, peer: &Arc<Peer>, job: Job) {
        let id = job.id_literal.clone();
        let reply = move |peer: &Peer, result: Result<Answer, Failure>| {
            let out = match result {
                Ok(a) => a.encode(&id),
                Err(f) => {
                    let mut frame = String::new();
                    encode::reply_error(&mut frame, &id, f.ty, &f.message);
                    Outbound::Frame(frame)
                }
            };
            let _ = peer.enqueue(out);
        };
        if peer.table_calls.fetch_add(1, Ordering::AcqRel) >= PER_CONNECTION {
            peer.table_calls.fetch_sub(1, Ordering::AcqRel);
            reply(
                peer,
                Err(Failure {
                    ty: error_type::QUOTA_EXCEEDED,
                    message: format!(
                        "at most {PER_CONNECTION} data table calls may be waiting per connection; wait for some to finish"
                    ),
                }),
            );
            return;
        }
        let who = Who {
            app: peer.app.clone(),
            server: peer.privilege == Privilege::Server && peer.browser.is_none(),
            user: peer.browser.as_ref().is_some_and(|b| b.email.is_some()),
        };
        let state = state.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let permit = state.tables.workers.clone().acquire_owned().await;
            let worker = state.clone();
            let result = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                worker.tables.run(&worker, &who, &job)
            })
            .await
            .unwrap_or_else(|_| {
                Err(Failure {
                    ty: error_type::INTERNAL,
                    message: "the data table call failed inside the server".to_owned(),
                })
            });
            peer.table_calls.fetch_sub(1, Ordering::AcqRel);
            reply(&peer, result);
        });
    }

    /// Runs one call (on a blocking thread).
    fn run(&self, state: &Arc<ServerState>, who: &Who, job: &Job) -> Result<Answer, Failure> {
        match job.command.as_str() {
            "anvil.private.tables.open_transaction" => return self.open(state, who, job),
            "anvil.private.tables.close_transaction" => return self.close(job),
            _ => {}
        }
        if job.command == FETCH_MEDIA {
            return rpc::fetch_media(self, state, who, job);
        }
        if let Some(name) = job.command.strip_prefix(plain::PREFIX) {
            let call = plain::Request::parse(who, name, job)?;
            return self.in_transaction_or(state, who, job, call.writes(), |t| call.run(t));
        }
        let Some(name) = job.command.strip_prefix("anvil.private.tables.v2.") else {
            return Err(Failure {
                ty: error_type::NO_SERVER_FUNCTION,
                message: format!(
                    "No server function matching \"{}\" has been registered: ferrolink speaks the v2 data tables protocol (anvil.private.tables.v2.*)",
                    job.command.chars().take(120).collect::<String>()
                ),
            });
        };
        let call = rpc::Request::parse(self, who, name, job)?;
        self.in_transaction_or(state, who, job, call.writes(), |t| call.run(t))
    }

    /// Runs `f` in the caller's open transaction, or else in a transaction
    /// of its own (a write transaction if `writes`).
    fn in_transaction_or(
        &self,
        state: &Arc<ServerState>,
        who: &Who,
        job: &Job,
        writes: bool,
        f: impl FnOnce(&crate::storage::tables::Tables<'_>) -> Result<Answer, Failure>,
    ) -> Result<Answer, Failure> {
        let txn = self
            .transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.txn)
            .map(|(_, t)| t.clone());
        let Some(txn) = txn else {
            return if writes {
                state.store.write(&who.app, f)
            } else {
                state.store.read(&who.app, f)
            };
        };
        let mut txn = txn.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *txn {
            Txn::Expired => Err(expired()),
            Txn::Open { tx, conflicted } => {
                let out = tx.run(&who.app, f);
                if matches!(&out, Err(f) if f.ty == CONFLICT) {
                    *conflicted = true;
                }
                out
            }
        }
    }

    /// `anvil.private.tables.open_transaction(isolation=…)`.
    fn open(&self, state: &Arc<ServerState>, who: &Who, job: &Job) -> Result<Answer, Failure> {
        if !who.server {
            return Err(Failure {
                ty: error_type::PERMISSION_DENIED,
                message: "only server-privilege uplinks may open data table transactions"
                    .to_owned(),
            });
        }
        {
            let open = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
            if open.contains_key(&job.txn) {
                return Err(table_error("You already have a transaction open here"));
            }
            if open.len() >= TRANSACTIONS
                || open.keys().filter(|(c, _)| *c == job.txn.0).count()
                    >= TRANSACTIONS_PER_CONNECTION
            {
                return Err(Failure {
                    ty: CONFLICT,
                    message: "too many data table transactions are open; try again".to_owned(),
                });
            }
        }
        let tx = state.store.begin()?;
        let n = self.next_txn.fetch_add(1, Ordering::Relaxed);
        let txn = Arc::new(Mutex::new(Txn::Open {
            tx: Box::new(tx),
            conflicted: false,
        }));
        self.transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.txn.clone(), (n, txn.clone()));
        // Past its lifetime the transaction is rolled back, wherever its
        // client is: it must not hold the write lock for ever.
        let key = job.txn.clone();
        let state = state.clone();
        tokio::runtime::Handle::current().spawn(async move {
            tokio::time::sleep(TRANSACTION_LIFETIME).await;
            let held = state
                .tables
                .transactions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .filter(|(m, _)| *m == n)
                .map(|(_, t)| t.clone());
            if let Some(txn) = held {
                tokio::task::spawn_blocking(move || {
                    *txn.lock().unwrap_or_else(|p| p.into_inner()) = Txn::Expired;
                });
                tracing::info!(
                    conn = key.0,
                    "rolled back a data table transaction open for over {} s",
                    TRANSACTION_LIFETIME.as_secs()
                );
            }
        });
        Ok(Answer::plain(serde_json::Value::Null))
    }

    /// `anvil.private.tables.close_transaction(abort)`.
    fn close(&self, job: &Job) -> Result<Answer, Failure> {
        let Ok((abort,)) = serde_json::from_str::<(bool,)>(&job.args) else {
            return Err(table_error("close_transaction(abort) takes one boolean"));
        };
        let Some((_, txn)) = self
            .transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.txn)
        else {
            return Err(table_error("There is no transaction open here"));
        };
        let txn = std::mem::replace(
            &mut *txn.lock().unwrap_or_else(|p| p.into_inner()),
            Txn::Expired,
        );
        match txn {
            // Rolling back is always possible, even after a conflict or
            // once the server rolled it back itself.
            _ if abort => Ok(Answer::plain(serde_json::Value::Null)),
            Txn::Expired => Err(expired()),
            Txn::Open { conflicted: true, .. } => Err(Failure {
                ty: CONFLICT,
                message: "a call in this transaction lost a race with another transaction; it was rolled back".to_owned(),
            }),
            Txn::Open { tx, .. } => {
                tx.commit()?;
                Ok(Answer::plain(serde_json::Value::Null))
            }
        }
    }

    /// Rolls back the transactions of a connection that closed.
    pub(crate) fn closed(&self, conn: u64) {
        let gone: Vec<_> = {
            let mut open = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<TxnKey> = open.keys().filter(|(c, _)| *c == conn).cloned().collect();
            keys.into_iter().filter_map(|k| open.remove(&k)).collect()
        };
        if !gone.is_empty() {
            // Dropping a connection's SQLite handle rolls back; do it off
            // the async threads.
            tokio::task::spawn_blocking(move || drop(gone));
        }
    }
}

fn expired() -> Failure {
    Failure {
        ty: CONFLICT,
        message: format!(
            "this transaction was open for over {} s and the server rolled it back",
            TRANSACTION_LIFETIME.as_secs()
        ),
    }
}
