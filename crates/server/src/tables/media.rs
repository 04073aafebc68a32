//! Media sent with a table call (`add_row(photo=BlobMedia(...))`): the
//! call declares `DataMedia` objects and their bytes follow as
//! `CHUNK_HEADER` + binary frame pairs (wire doc §6.3). A connection's
//! driver holds such a call here until every media object is complete,
//! then submits it. Bounded: a few calls per connection, a byte budget, a
//! deadline; past any of them the call is answered with an error and its
//! remaining chunks are dropped.

use std::time::Duration;

use ferrolink_proto::Instant;
use ferrolink_proto::error_type;
use ferrolink_proto::message::Call;

use crate::calls::peer::Peer;
use crate::storage::tables::MAX_MEDIA_BYTES;

use super::{Failure, Job};

/// Calls one connection may have waiting for their media.
const WAITING: usize = 4;
/// Media bytes one connection may hold at once.
const BYTES: usize = 4 * MAX_MEDIA_BYTES;
/// How long a call may wait for its media.
const DEADLINE: Duration = Duration::from_secs(60);

struct Waiting {
    /// The call's id as sent (without quotes), which chunk headers name.
    request_id: String,
    job: Job,
    /// Media ids still incomplete.
    missing: Vec<String>,
    since: Instant,
}

/// A connection's calls waiting for media.
#[derive(Default)]
pub(crate) struct MediaIn {
    waiting: Vec<Waiting>,
    /// Where the next binary frame goes: (request id, media id, last).
    next: Option<(String, String, bool)>,
    bytes: usize,
}

/// The media ids a call's `objects` declares, if any.
pub(crate) fn declared(call: &Call<'_>) -> Vec<String> {
    // Most table calls carry no media: skip the parse for them.
    let Some(objects) = call.objects.filter(|o| o.get().contains("\"DataMedia\"")) else {
        return Vec::new();
    };
    let Ok(entries) = serde_json::from_str::<Vec<serde_json::Value>>(objects.get()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|e| e["type"].get(0).and_then(serde_json::Value::as_str) == Some("DataMedia"))
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

fn failure(message: String) -> Failure {
    Failure {
        ty: error_type::QUOTA_EXCEEDED,
        message,
    }
}

impl MediaIn {
    /// Holds `call` until the media `ids` arrive; a refusal is answered at
    /// once by the caller of this function.
    pub(crate) fn hold(
        &mut self,
        peer: &Peer,
        call: &Call<'_>,
        ids: Vec<String>,
        now: Instant,
    ) -> Result<(), Failure> {
        if self.waiting.len() >= WAITING {
            return Err(failure(format!(
                "at most {WAITING} data table calls with media may be in transfer per connection; wait for one to finish"
            )));
        }
        self.waiting.push(Waiting {
            request_id: call.id.value().into_owned(),
            job: Job::new(peer, call),
            missing: ids,
            since: now,
        });
        Ok(())
    }

    /// A chunk header: the next binary frame belongs to it.
    pub(crate) fn header(&mut self, request_id: String, media_id: String, last: bool) {
        let known = self
            .waiting
            .iter()
            .any(|w| w.request_id == request_id && w.missing.contains(&media_id));
        self.next = known.then_some((request_id, media_id, last));
    }

    /// A binary frame. Answers a call whose media is now complete (to be
    /// submitted), or one that must be failed (with its id literal).
    pub(crate) fn data(&mut self, bytes: &[u8]) -> Option<Result<Job, (String, Failure)>> {
        let (request_id, media_id, last) = self.next.take()?;
        let i = self
            .waiting
            .iter()
            .position(|w| w.request_id == request_id)?;
        let over_one = {
            let held = self.waiting[i].job.media.get(&media_id).map_or(0, Vec::len);
            held + bytes.len() > MAX_MEDIA_BYTES
        };
        if over_one || self.bytes + bytes.len() > BYTES {
            let w = self.drop_at(i);
            return Some(Err((
                w.job.id_literal,
                failure(format!(
                    "a media value holds at most {} MiB (and a connection {} MiB in transfer)",
                    MAX_MEDIA_BYTES >> 20,
                    BYTES >> 20
                )),
            )));
        }
        self.bytes += bytes.len();
        let w = &mut self.waiting[i];
        w.job
            .media
            .entry(media_id.clone())
            .or_default()
            .extend_from_slice(bytes);
        if last {
            w.missing.retain(|m| *m != media_id);
            if w.missing.is_empty() {
                return Some(Ok(self.drop_at(i).job));
            }
        }
        None
    }

    fn drop_at(&mut self, i: usize) -> Waiting {
        let w = self.waiting.remove(i);
        self.bytes -= w.job.media.values().map(Vec::len).sum::<usize>();
        if self
            .next
            .as_ref()
            .is_some_and(|(r, _, _)| *r == w.request_id)
        {
            self.next = None;
        }
        w
    }

    /// Calls that waited too long for their media, to be failed.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(String, Failure)> {
        let mut out = Vec::new();
        while let Some(i) = self
            .waiting
            .iter()
            .position(|w| now.saturating_duration_since(w.since) > DEADLINE)
        {
            let w = self.drop_at(i);
            out.push((
                w.job.id_literal,
                Failure {
                    ty: error_type::TIMEOUT,
                    message: format!(
                        "Timeout during media transfer: the media did not arrive within {} s",
                        DEADLINE.as_secs()
                    ),
                },
            ));
        }
        out
    }
}
