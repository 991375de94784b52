//! Build logs in a JetStream stream, one subject per build, so that any replica can show or
//! follow (Server-Sent Events) the log of a build that another replica runs, and logs survive a
//! restart. Lines are masked before they leave the process; a build's log ends with an end marker.

use std::time::Duration;

use async_nats::{
    jetstream::{self, consumer, stream},
    HeaderMap,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::secrets::Masker;

pub const STREAM: &str = "CONVEYOR_CI_LOGS";
/// Header of the last message of a build's log; its value is the build's end state.
pub const END_HEADER: &str = "Conveyor-Log-End";
/// Lines kept per build attempt; more are dropped with a note.
const MAX_LINES: usize = 50_000;
/// Output is sent in chunks of at most this many bytes.
const CHUNK_BYTES: usize = 32 * 1024;

pub fn subject(id: u64) -> String {
    format!("conveyor.ci.logs.{id}")
}

#[derive(Debug, thiserror::Error)]
#[error("build logs: {0}")]
pub struct LogError(String);

fn err(e: impl std::fmt::Display) -> LogError {
    LogError(e.to_string())
}

/// A stream with `max_bytes` reserves that much of the server's file store when it is created,
/// and nats-server's store defaults to 75% of the disk's free space: on a nearly full disk the
/// default 1 GiB does not fit. Say so, and what to change, instead of NATS's bare error code.
fn open_error(e: jetstream::context::CreateStreamError, max_bytes: i64) -> LogError {
    let code = match e.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(js) => Some(js.kind()),
        _ => None,
    };
    match code {
        Some(jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED | jetstream::ErrorCode::INSUFFICIENT_RESOURCES) => LogError(format!(
            "NATS cannot reserve {max_bytes} bytes of file storage for the log stream {STREAM} ({e}). \
             Lower CONVEYOR_LOGS_MAX_BYTES (--logs-max-bytes), or give nats-server more: its \
             `jetstream {{ max_file_store }}` defaults to 75% of the free disk space"
        )),
        _ => err(e),
    }
}

/// What a reader of a log sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogItem {
    Lines(String),
    /// The build ended with this state.
    End(String),
}

#[derive(Clone)]
pub struct Logs {
    js: jetstream::Context,
    stream: stream::Stream,
}

impl Logs {
    /// Opens (or creates, with `replicas` replicas) the log stream.
    pub async fn open(js: &jetstream::Context, max_age: Duration, max_bytes: i64, replicas: u8) -> Result<Self, LogError> {
        let config = stream::Config {
            name: STREAM.into(),
            description: Some("Conveyor ci-service build logs".into()),
            subjects: vec!["conveyor.ci.logs.*".into()],
            max_age,
            max_bytes,
            storage: stream::StorageType::File,
            num_replicas: usize::from(replicas.max(1)),
            ..Default::default()
        };
        let stream = conveyor_proto::stream::create_or_open(js, config).await.map_err(|e| open_error(e, max_bytes))?;
        conveyor_proto::stream::check_replicas(&stream, replicas).map_err(LogError)?;
        Ok(Self { js: js.clone(), stream })
    }

    /// A writer for build `id`'s log.
    pub fn writer(&self, id: u64, masker: Masker) -> LogWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(append(self.js.clone(), subject(id), rx));
        LogWriter { tx, task, masker, lines: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// The whole log so far.
    pub async fn read(&self, id: u64) -> Result<String, LogError> {
        let last = match self.stream.get_last_raw_message_by_subject(&subject(id)).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(String::new()),
            Err(e) => return Err(err(e)),
        };
        let mut out = String::new();
        let mut messages = self.follow_raw(id).await?;
        while let Some(msg) =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await.map_err(|_| err("timed out reading the log"))?
        {
            let msg = msg.map_err(err)?;
            out.push_str(&String::from_utf8_lossy(&msg.payload));
            if msg.info().map(|i| i.stream_sequence >= last).unwrap_or(true) {
                break;
            }
        }
        Ok(out)
    }

    /// The log from its start, then live as it grows, until its end marker.
    pub async fn follow(&self, id: u64) -> Result<impl Stream<Item = Result<LogItem, LogError>> + Send + 'static, LogError> {
        let messages = self.follow_raw(id).await?;
        Ok(messages.map(|m| {
            let m = m.map_err(err)?;
            if let Some(state) = m.headers.as_ref().and_then(|h| h.get(END_HEADER)) {
                return Ok(LogItem::End(state.as_str().to_string()));
            }
            Ok(LogItem::Lines(String::from_utf8_lossy(&m.payload).into_owned()))
        }))
    }

    async fn follow_raw(&self, id: u64) -> Result<consumer::pull::Ordered, LogError> {
        self.stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject(id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(err)?
            .messages()
            .await
            .map_err(err)
    }
}

enum Cmd {
    Line(String),
    End(String, tokio::sync::oneshot::Sender<()>),
}

/// Appends one build's log lines; lines go out in chunks, in order.
pub struct LogWriter {
    tx: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    masker: Masker,
    lines: std::sync::atomic::AtomicUsize,
}

impl LogWriter {
    /// Adds `text` (one or more lines), with secrets masked.
    pub fn line(&self, text: &str) {
        use std::sync::atomic::Ordering;
        for line in text.lines() {
            let n = self.lines.fetch_add(1, Ordering::Relaxed);
            if n == MAX_LINES {
                let _ = self.tx.send(Cmd::Line(format!("[conveyor] log truncated at {MAX_LINES} lines")));
            }
            if n >= MAX_LINES {
                return;
            }
            let _ = self.tx.send(Cmd::Line(self.masker.mask(line).into_owned()));
        }
    }

    /// Flushes the log and writes its end marker.
    pub async fn close(self, end_state: &str) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Cmd::End(end_state.to_string(), done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
        self.task.abort();
    }
}

async fn append(js: jetstream::Context, subject: String, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut buf = String::new();
    let publish = |js: &jetstream::Context, payload: String, headers: Option<HeaderMap>| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            let sent = match headers {
                Some(h) => js.publish_with_headers(subject, h, Bytes::from(payload)).await,
                None => js.publish(subject, Bytes::from(payload)).await,
            };
            match sent {
                Ok(ack) => {
                    if let Err(e) = ack.await {
                        tracing::warn!(error = %e, "a build log chunk was not stored");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a build log chunk was not sent"),
            }
        }
    };
    while let Some(cmd) = rx.recv().await {
        let mut end = None;
        match cmd {
            Cmd::Line(l) => {
                buf.push_str(&l);
                buf.push('\n');
            }
            Cmd::End(state, done) => end = Some((state, done)),
        }
        // Take whatever else is waiting, up to a chunk.
        while end.is_none() && buf.len() < CHUNK_BYTES {
            match rx.try_recv() {
                Ok(Cmd::Line(l)) => {
                    buf.push_str(&l);
                    buf.push('\n');
                }
                Ok(Cmd::End(state, done)) => end = Some((state, done)),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            publish(&js, std::mem::take(&mut buf), None).await;
        }
        if let Some((state, done)) = end {
            let mut h = HeaderMap::new();
            h.insert(END_HEADER, state.as_str());
            publish(&js, String::new(), Some(h)).await;
            let _ = done.send(());
            return;
        }
    }
}
