//! Capabilities: the unforgeable handles the official client holds for a
//! table, a row or a search, and sends back on every table call.
//!
//! A capability is a scope (a JSON list the server chooses; see
//! docs/tables-protocol.md §4) and a MAC: HMAC-SHA256, keyed with a secret
//! kept in the database, over the app's name and the scope's canonical
//! JSON. The client never looks inside; the server verifies the MAC of
//! every capability it is handed, so a scope cannot be widened (another
//! row, another table, another query) or carried to another app.

use hmac::{Hmac, Mac as _};
use serde_json::Value;
use sha2::Sha256;

/// Mints and verifies capabilities.
pub(crate) struct Caps {
    key: Vec<u8>,
}

/// What a view grants whoever holds it, whatever the table's client access
/// (`client_readable()`, `client_writable()`, `client_writable_cascade()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Perm {
    /// Read.
    R,
    /// Read and write.
    Rw,
    /// Read and write, linked rows too (treated as `Rw`).
    Rwc,
}

impl Perm {
    fn as_str(self) -> &'static str {
        match self {
            Self::R => "r",
            Self::Rw => "rw",
            Self::Rwc => "rwc",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "r" => Self::R,
            "rw" => Self::Rw,
            "rwc" => Self::Rwc,
            _ => return None,
        })
    }
}

/// A table as a handle sees it: the whole table, or a view of it with a
/// permission and a restriction (a query its rows must match).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    pub(crate) table: i64,
    pub(crate) perm: Option<Perm>,
    /// The JSON of a `storage::tables::Query` (filters only).
    pub(crate) restrict: Option<String>,
}

impl View {
    /// The whole table, as the app's server code sees it.
    pub(crate) fn table(table: i64) -> Self {
        Self {
            table,
            perm: None,
            restrict: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = serde_json::json!({ "id": self.table });
        if let Some(p) = self.perm {
            v["perm"] = p.as_str().into();
        }
        if let Some(r) = &self.restrict {
            v["restrict"] = r.clone().into();
        }
        v
    }

    /// The view key the client files this view's rows under: the view's
    /// JSON with sorted keys (`{"id":1}` for a whole table).
    pub(crate) fn key(&self) -> String {
        self.to_json().to_string()
    }

    fn from_json(v: &Value) -> Option<Self> {
        let o = v.as_object()?;
        if o.keys()
            .any(|k| !matches!(k.as_str(), "id" | "perm" | "restrict"))
        {
            return None;
        }
        Some(Self {
            table: o.get("id")?.as_i64()?,
            perm: match o.get("perm") {
                None => None,
                Some(p) => Some(Perm::parse(p.as_str()?)?),
            },
            restrict: match o.get("restrict") {
                None => None,
                Some(r) => Some(r.as_str()?.to_owned()),
            },
        })
    }
}

/// What a verified capability grants.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scope {
    /// A table (or a view of it).
    Table(View),
    /// One row, reached through a view.
    Row(View, i64),
    /// A search: its query (this module does not read it), and where the
    /// page starts (`None`: the search itself, page one).
    Search {
        view: View,
        query: String,
        page_size: usize,
        offset: Option<usize>,
    },
}

impl Scope {
    fn to_json(&self) -> Value {
        match self {
            Self::Table(v) => serde_json::json!(["_", "t", v.to_json()]),
            Self::Row(v, r) => serde_json::json!(["_", "t", v.to_json(), { "r": r }]),
            Self::Search {
                view,
                query,
                page_size,
                offset,
            } => serde_json::json!(
                ["_", "t", view.to_json(), { "q": query, "n": page_size }, offset]
            ),
        }
    }

    fn from_json(v: &Value) -> Option<Self> {
        let a = v.as_array()?;
        if a.first()?.as_str()? != "_" || a.get(1)?.as_str()? != "t" {
            return None;
        }
        let view = View::from_json(a.get(2)?)?;
        match a.len() {
            3 => Some(Self::Table(view)),
            4 => {
                let r = a[3].as_object()?;
                (r.len() == 1).then_some(())?;
                Some(Self::Row(view, r.get("r")?.as_i64()?))
            }
            5 => {
                let s = a[3].as_object()?;
                Some(Self::Search {
                    view,
                    query: s.get("q")?.as_str()?.to_owned(),
                    page_size: usize::try_from(s.get("n")?.as_u64()?).ok()?,
                    offset: match &a[4] {
                        Value::Null => None,
                        o => Some(usize::try_from(o.as_u64()?).ok()?),
                    },
                })
            }
            _ => None,
        }
    }
}

/// Why a capability was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a capability entry, or a scope this server never mints.
    Malformed,
    /// The MAC does not match: forged, changed, or from another app.
    BadMac,
}

impl Caps {
    pub(crate) fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, app: &str, scope: &Value) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(app.as_bytes());
        mac.update(&[0]);
        // serde_json's maps are sorted, so this is the canonical form
        // whatever order the client wrote the keys in.
        mac.update(scope.to_string().as_bytes());
        mac
    }

    /// The `objects` entry for `scope` at `path`.
    pub(crate) fn entry(&self, app: &str, scope: &Scope, path: Value) -> Value {
        let scope = scope.to_json();
        let mac = hex(&self.mac(app, &scope).finalize().into_bytes());
        serde_json::json!({
            "type": ["Capability"],
            "path": path,
            "scope": scope,
            "mac": mac,
        })
    }

    /// The `LazyMedia` entry for the media in `column` of row `row` of
    /// table `table`, described by `description` (`{"mime", "name",
    /// "length"}`): its `key` names the cell, its `id` is the key's MAC.
    pub(crate) fn media_entry(
        &self,
        app: &str,
        (table, row, column): (i64, i64, &str),
        description: &Value,
        path: Value,
    ) -> Value {
        let key = serde_json::json!([table, row, column]).to_string();
        let id = hex(&self
            .mac(app, &serde_json::json!(["_", "media", key]))
            .finalize()
            .into_bytes());
        serde_json::json!({
            "type": ["LazyMedia"],
            "path": path,
            "manager": "ferrolink.tables",
            "key": key,
            "id": id,
            "mime-type": description["mime"],
            "length": description["length"],
            "name": description["name"],
        })
    }

    /// Verifies a `LazyMedia` entry minted by [`Caps::media_entry`]:
    /// answers its table, row and column.
    pub(crate) fn verify_media(
        &self,
        app: &str,
        entry: &Value,
    ) -> Result<(i64, i64, String), Refused> {
        let key = entry
            .get("key")
            .and_then(Value::as_str)
            .ok_or(Refused::Malformed)?;
        let mac = entry
            .get("id")
            .and_then(Value::as_str)
            .and_then(unhex)
            .ok_or(Refused::Malformed)?;
        self.mac(app, &serde_json::json!(["_", "media", key]))
            .verify_slice(&mac)
            .map_err(|_| Refused::BadMac)?;
        let (table, row, column): (i64, i64, String) =
            serde_json::from_str(key).map_err(|_| Refused::Malformed)?;
        Ok((table, row, column))
    }

    /// Verifies a `Capability` entry of `objects` sent by a connection of
    /// `app`.
    pub(crate) fn verify(&self, app: &str, entry: &Value) -> Result<Scope, Refused> {
        let e = entry.as_object().ok_or(Refused::Malformed)?;
        // A narrowed capability is never minted here, and narrowing could
        // turn a table into a row: refuse it rather than interpret it.
        if e.contains_key("narrow") {
            return Err(Refused::Malformed);
        }
        let scope = e.get("scope").ok_or(Refused::Malformed)?;
        let mac = e
            .get("mac")
            .and_then(Value::as_str)
            .and_then(unhex)
            .ok_or(Refused::Malformed)?;
        self.mac(app, scope)
            .verify_slice(&mac)
            .map_err(|_| Refused::BadMac)?;
        Scope::from_json(scope).ok_or(Refused::Malformed)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        Caps::new(vec![7; 32])
    }

    #[test]
    fn a_minted_capability_verifies_and_round_trips_its_scope() {
        let c = caps();
        let view = View {
            table: 3,
            perm: Some(Perm::R),
            restrict: Some("{\"filters\":[]}".into()),
        };
        for scope in [
            Scope::Table(View::table(3)),
            Scope::Table(view.clone()),
            Scope::Row(View::table(3), 99),
            Scope::Row(view.clone(), 99),
            Scope::Search {
                view: View::table(3),
                query: "{\"filters\":[]}".into(),
                page_size: 100,
                offset: None,
            },
            Scope::Search {
                view,
                query: "{}".into(),
                page_size: 2,
                offset: Some(40),
            },
        ] {
            let e = c.entry("greenhouse", &scope, serde_json::json!(["response", 0]));
            assert_eq!(c.verify("greenhouse", &e), Ok(scope));
        }
    }

    #[test]
    fn forged_widened_or_foreign_capabilities_are_refused() {
        let c = caps();
        let e = c.entry(
            "greenhouse",
            &Scope::Row(View::table(3), 1),
            serde_json::json!([]),
        );
        // Another app's connection.
        assert_eq!(c.verify("other", &e), Err(Refused::BadMac));
        // Another row, same MAC.
        let mut widened = e.clone();
        widened["scope"][3]["r"] = 2.into();
        assert_eq!(c.verify("greenhouse", &widened), Err(Refused::BadMac));
        // A row capability cut down to its table.
        let mut table = e.clone();
        table["scope"].as_array_mut().unwrap().pop();
        assert_eq!(c.verify("greenhouse", &table), Err(Refused::BadMac));
        // A server with another secret.
        assert_eq!(
            Caps::new(vec![8; 32]).verify("greenhouse", &e),
            Err(Refused::BadMac)
        );
        // Narrowing, missing or malformed MACs.
        let mut narrowed = e.clone();
        narrowed["narrow"] = serde_json::json!([{"r": 2}]);
        assert_eq!(c.verify("greenhouse", &narrowed), Err(Refused::Malformed));
        let mut no_mac = e.clone();
        no_mac["mac"] = "zz".into();
        assert_eq!(c.verify("greenhouse", &no_mac), Err(Refused::Malformed));
        // Key order in the scope does not matter, content does.
        let view_first = serde_json::json!({
            "scope": ["_", "t", {"id": 3}, {"r": 1}],
            "mac": e["mac"],
        });
        assert_eq!(
            c.verify("greenhouse", &view_first),
            Ok(Scope::Row(View::table(3), 1))
        );
        // A read-only view made writable, or its restriction dropped.
        let ro = View {
            table: 3,
            perm: Some(Perm::R),
            restrict: Some("{\"filters\":[]}".into()),
        };
        let e = c.entry("greenhouse", &Scope::Table(ro), serde_json::json!([]));
        for (key, value) in [
            ("perm", serde_json::json!("rw")),
            ("restrict", serde_json::json!(null)),
        ] {
            let mut changed = e.clone();
            if value.is_null() {
                changed["scope"][2].as_object_mut().unwrap().remove(key);
            } else {
                changed["scope"][2][key] = value;
            }
            assert_eq!(
                c.verify("greenhouse", &changed),
                Err(Refused::BadMac),
                "{key}"
            );
        }
    }
}
