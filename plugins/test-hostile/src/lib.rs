//! A plugin that misbehaves on purpose, in every export (transform, observe, authenticate,
//! and the storage port's store),
//! chosen by the config key `mode`: `loop` never returns, `memory` allocates without end,
//! `trap` panics; for transform and authenticate, `huge` answers 2 MiB, and `snoop` reports
//! which of env, args, files, the data dir and a socket (`connect`, default 127.0.0.1:5432)
//! it could reach — as the replaced payload, or as an authenticator's denial. A transformer
//! also has `nested` (JSON 100,000 deep) and `not-json`. As a store, `garbage` breaks the
//! contract in every answer (another key, text that is not JSON, keys out of order, a wrong
//! revision, a delete that answers 5, sequence 0, numbers that skip) and `error` answers an error with an unknown code.
//! The hostile-plugin tests load it; never deploy it.

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/observe", "../../wit/auth", "../../wit/storage", "wit"],
    world: "ash:test-hostile/hostile",
    generate_all,
});

use ash::auth::types::{Decision, Principal, Request};
use ash::host::config;
use ash::storage::types::{Document, Entry, Error, Write};
use exports::ash::auth::authenticate::Guest as Authenticate;
use exports::ash::observe::observe::Guest as Observe;
use exports::ash::observe::transform::{Event, Guest as Transform, Verdict};
use exports::ash::storage::store::Guest as Store;

struct Hostile;

/// What every export does for `loop`, `memory` and `trap`: never come back.
fn misbehave() {
    match config::get("mode").as_deref() {
        Some("loop") => loop {
            std::hint::black_box(());
        },
        Some("memory") => {
            // Large untouched blocks: the cap is hit at once, not after a slow fill that a
            // busy machine could turn into a deadline miss.
            let mut hoard = Vec::new();
            loop {
                hoard.push(Vec::<u8>::with_capacity(8 << 20));
                std::hint::black_box(&hoard);
            }
        }
        Some("trap") => panic!("hostile plugin traps"),
        _ => {}
    }
}

fn snoop() -> String {
    let target = config::get("connect").unwrap_or_else(|| "127.0.0.1:5432".into());
    serde_json::json!({
        "env": std::env::vars().count(),
        "args": std::env::args().count(),
        "file": std::fs::read_to_string("/etc/passwd").is_ok(),
        "dir": std::fs::read_dir("/").is_ok(),
        "data": std::fs::write("/data/snooped", b"x").is_ok(),
        "socket": std::net::TcpStream::connect(target.as_str()).is_ok(),
    })
    .to_string()
}

impl Transform for Hostile {
    fn transform(_event: Event) -> Verdict {
        misbehave();
        match config::get("mode").as_deref() {
            Some("huge") => Verdict::Replace(format!("\"{}\"", "x".repeat(2 << 20))),
            Some("nested") => Verdict::Replace("[".repeat(100_000) + &"]".repeat(100_000)),
            Some("not-json") => Verdict::Replace("this is not JSON".into()),
            Some("snoop") => Verdict::Replace(snoop()),
            _ => Verdict::Keep,
        }
    }
}

impl Observe for Hostile {
    fn observe(_batch: Vec<Event>) {
        misbehave();
    }
}

impl Authenticate for Hostile {
    fn authenticate(_request: Request) -> Decision {
        misbehave();
        match config::get("mode").as_deref() {
            Some("huge") => Decision::Allow(Principal {
                subject: "x".repeat(2 << 20),
                claims: Vec::new(),
            }),
            Some("snoop") => Decision::Deny(snoop()),
            _ => Decision::Abstain,
        }
    }
}

/// A store's error in `error` mode, after `misbehave` for `loop`, `memory` and `trap`; in
/// `garbage` mode the caller goes on to break the contract.
fn store_error() -> Result<(), Error> {
    misbehave();
    match config::get("mode").as_deref() {
        Some("error") => Err(Error {
            code: "teapot".into(),
            message: "the hostile store refuses".into(),
        }),
        _ => Ok(()),
    }
}

fn wrong_document(collection: String, key: &str) -> Document {
    Document {
        collection,
        key: format!("not-{key}"),
        revision: 1,
        data: "this is not JSON".into(),
    }
}

impl Store for Hostile {
    fn get(collection: String, key: String) -> Result<Option<Document>, Error> {
        store_error()?;
        Ok(Some(wrong_document(collection, &key)))
    }

    fn list(collection: String, _after: String, _limit: u32) -> Result<Vec<Document>, Error> {
        store_error()?;
        let mut b = wrong_document(collection.clone(), "b");
        b.data = "{}".into();
        let mut a = wrong_document(collection, "a");
        a.data = "{}".into();
        Ok(vec![b, a])
    }

    fn find(
        collection: String,
        _index: String,
        _value: String,
        after: String,
        limit: u32,
    ) -> Result<Vec<Document>, Error> {
        Self::list(collection, after, limit)
    }

    fn read(_stream: String, after: u64, _limit: u32) -> Result<Vec<Entry>, Error> {
        store_error()?;
        Ok(vec![Entry {
            sequence: after + 2,
            data: "{}".into(),
        }])
    }

    fn commit(writes: Vec<Write>) -> Result<Vec<u64>, Error> {
        store_error()?;
        Ok(writes
            .iter()
            .map(|write| match write {
                Write::Put(put) => put.expected + 7,
                Write::Delete(_) => 5,
                Write::Append(_) => 0,
            })
            .collect())
    }
}

export!(Hostile);
