//! The conformance suite of the storage port: what every backend — SQLite, Postgres, a storage
//! plugin — must do alike, concurrency included. [`run`] panics, naming the broken rule, at the
//! first thing a backend gets wrong. Every name it uses starts with `prefix`, so runs can share
//! a database. [`run_records`] then checks the server's records ([`crate::Store`]) on it.

use ash_core::{Storage, StorageError, Write, MAX_INDEX_ENTRIES, MAX_NAME_BYTES, MAX_WRITES};
use futures_util::future::join_all;

mod postgres;
mod records;
mod redis;

pub use postgres::{postgres_url, TestSchema};
pub use records::run_records;
pub use redis::{redis_address, TestRedis};

/// Runs every check against `storage`.
pub async fn run(storage: &dyn Storage, prefix: &str) {
    documents_and_revisions(storage, prefix).await;
    listing_is_bytewise_and_paged(storage, prefix).await;
    finds_follow_index_changes(storage, prefix).await;
    deletes_check_the_revision(storage, prefix).await;
    streams_number_without_gaps(storage, prefix).await;
    bad_requests_are_invalid(storage, prefix).await;
    racing_writers_one_wins(storage, prefix).await;
    parallel_appends_stay_gap_free(storage, prefix).await;
    commits_are_all_or_nothing(storage, prefix).await;
    racing_commits_write_only_the_winner(storage, prefix).await;
}

fn conflict<T: std::fmt::Debug>(outcome: Result<T, StorageError>, rule: &str) {
    assert!(
        matches!(outcome, Err(StorageError::Conflict(_))),
        "{rule}: expected a conflict, got {outcome:?}"
    );
}

fn invalid<T: std::fmt::Debug>(outcome: Result<T, StorageError>, rule: &str) {
    assert!(
        matches!(outcome, Err(StorageError::Invalid(_))),
        "{rule}: expected invalid, got {outcome:?}"
    );
}

async fn documents_and_revisions(s: &dyn Storage, p: &str) {
    let c = format!("{p}docs");
    assert_eq!(s.get(&c, "a").await.unwrap(), None, "a missing document");
    assert_eq!(s.put(&c, "a", r#"{"v":1}"#, 0, &[]).await.unwrap(), 1);
    conflict(s.put(&c, "a", "{}", 0, &[]).await, "creating what exists");
    assert_eq!(s.put(&c, "a", r#"{"v":2}"#, 1, &[]).await.unwrap(), 2);
    conflict(
        s.put(&c, "a", r#"{"v":"stale"}"#, 1, &[]).await,
        "a stale revision",
    );
    conflict(
        s.put(&c, "new", "{}", 3, &[]).await,
        "updating what does not exist",
    );
    let a = s.get(&c, "a").await.unwrap().expect("written");
    assert_eq!(
        (a.revision, a.data.as_str()),
        (2, r#"{"v":2}"#),
        "the last write"
    );
    assert_eq!((a.collection.as_str(), a.key.as_str()), (c.as_str(), "a"));
    assert_eq!(
        s.get(&c, "new").await.unwrap(),
        None,
        "a conflict writes nothing"
    );

    let text = format!(
        r#"{{"text":"{}","unicode":"ü€𝄞 \"quoted\""}}"#,
        "x".repeat(1 << 20)
    );
    s.put(&c, "big", &text, 0, &[]).await.unwrap();
    assert_eq!(
        s.get(&c, "big").await.unwrap().unwrap().data,
        text,
        "1 MiB round-trips"
    );
    assert_eq!(
        s.get(&format!("{p}other"), "a").await.unwrap(),
        None,
        "collections are separate"
    );
}

async fn listing_is_bytewise_and_paged(s: &dyn Storage, p: &str) {
    let c = format!("{p}list");
    let keys = ["b", "a10", "B", "a", "ä", "a9", "a-"];
    for key in keys {
        s.put(&c, key, "{}", 0, &[]).await.unwrap();
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    let all: Vec<String> = s
        .list(&c, "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect();
    assert_eq!(all, sorted, "keys in bytewise order");
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = s.list(&c, &after, 3).await.unwrap();
        assert!(page.len() <= 3, "a page holds at most its limit");
        let Some(last) = page.last() else { break };
        after = last.key.clone();
        paged.extend(page.into_iter().map(|d| d.key));
    }
    assert_eq!(paged, sorted, "pages after a key cover everything once");
}

async fn finds_follow_index_changes(s: &dyn Storage, p: &str) {
    let c = format!("{p}lookup");
    let by = |agent: &str| vec![("agent".to_owned(), agent.to_owned())];
    let both = |agent: &str, status: &str| {
        vec![
            ("agent".to_owned(), agent.to_owned()),
            ("status".to_owned(), status.to_owned()),
        ]
    };
    s.put(&c, "s1", "{}", 0, &both("alpha", "active"))
        .await
        .unwrap();
    s.put(&c, "s2", "{}", 0, &by("alpha")).await.unwrap();
    s.put(&c, "s3", "{}", 0, &both("beta", "active"))
        .await
        .unwrap();
    let keys = |docs: Vec<ash_core::Document>| docs.into_iter().map(|d| d.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.find(&c, "agent", "alpha", "", 10).await.unwrap()),
        ["s1", "s2"]
    );
    assert_eq!(
        keys(s.find(&c, "status", "active", "", 10).await.unwrap()),
        ["s1", "s3"]
    );
    assert_eq!(
        keys(s.find(&c, "agent", "alpha", "s1", 10).await.unwrap()),
        ["s2"]
    );
    assert_eq!(
        keys(s.find(&c, "agent", "alpha", "", 1).await.unwrap()),
        ["s1"]
    );
    s.put(&c, "s1", r#"{"moved":true}"#, 1, &by("beta"))
        .await
        .unwrap();
    assert_eq!(
        keys(s.find(&c, "agent", "alpha", "", 10).await.unwrap()),
        ["s2"],
        "a write replaces the document's index entries"
    );
    assert_eq!(
        keys(s.find(&c, "status", "active", "", 10).await.unwrap()),
        ["s3"]
    );
    let moved = s.find(&c, "agent", "beta", "", 10).await.unwrap();
    assert_eq!(keys(moved.clone()), ["s1", "s3"]);
    assert_eq!(
        (moved[0].revision, moved[0].data.as_str()),
        (2, r#"{"moved":true}"#)
    );
    conflict(
        s.put(&c, "s2", "{}", 7, &by("gamma")).await,
        "a stale write",
    );
    assert!(
        s.find(&c, "agent", "gamma", "", 10)
            .await
            .unwrap()
            .is_empty(),
        "a conflict changes no index entry"
    );
}

async fn deletes_check_the_revision(s: &dyn Storage, p: &str) {
    let c = format!("{p}delete");
    let index = vec![("owner".to_owned(), "x".to_owned())];
    s.put(&c, "d", "{}", 0, &index).await.unwrap();
    s.put(&c, "d", "{}", 1, &index).await.unwrap();
    conflict(s.delete(&c, "d", 1).await, "deleting a stale revision");
    assert!(s.get(&c, "d").await.unwrap().is_some(), "still there");
    assert!(s.delete(&c, "d", 2).await.unwrap(), "deleted");
    assert!(
        !s.delete(&c, "d", 2).await.unwrap(),
        "nothing left to delete"
    );
    assert!(s.get(&c, "d").await.unwrap().is_none());
    assert!(
        s.find(&c, "owner", "x", "", 10).await.unwrap().is_empty(),
        "its index entries go with it"
    );
    assert_eq!(
        s.put(&c, "d", "{}", 0, &[]).await.unwrap(),
        1,
        "created anew"
    );
}

async fn streams_number_without_gaps(s: &dyn Storage, p: &str) {
    let stream = format!("{p}stream");
    assert!(
        s.read(&stream, 0, 10).await.unwrap().is_empty(),
        "a new stream is empty"
    );
    let entries = |items: &[&str]| items.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(s.append(&stream, &entries(&["1", "2"])).await.unwrap(), 1);
    assert_eq!(s.append(&stream, &entries(&["3"])).await.unwrap(), 3);
    let read = s.read(&stream, 0, 10).await.unwrap();
    let got: Vec<(u64, &str)> = read.iter().map(|e| (e.sequence, e.data.as_str())).collect();
    assert_eq!(got, [(1, "1"), (2, "2"), (3, "3")]);
    let tail = s.read(&stream, 1, 1).await.unwrap();
    assert_eq!((tail.len(), tail[0].sequence), (1, 2), "after and limit");
    assert!(s.read(&stream, 3, 10).await.unwrap().is_empty());
    let other = format!("{p}stream-2");
    assert_eq!(
        s.append(&other, &entries(&["\"x\""])).await.unwrap(),
        1,
        "streams are separate"
    );
    let many: Vec<String> = (0..2500).map(|i| format!("{{\"i\":{i}}}")).collect();
    assert_eq!(s.append(&other, &many).await.unwrap(), 2, "a large batch");
    let back = s.read(&other, 2500, 10).await.unwrap();
    assert_eq!(
        (back[0].sequence, back[0].data.as_str()),
        (2501, r#"{"i":2499}"#)
    );
}

async fn bad_requests_are_invalid(s: &dyn Storage, p: &str) {
    let c = format!("{p}bad");
    invalid(s.get(&c, "").await, "an empty key");
    invalid(s.get("", "k").await, "an empty collection");
    invalid(
        s.get(&c, &"k".repeat(MAX_NAME_BYTES + 1)).await,
        "an overlong key",
    );
    invalid(s.put(&c, "nul\0", "{}", 0, &[]).await, "a NUL in a key");
    invalid(s.list(&c, "", 0).await, "a limit of 0");
    invalid(
        s.append(&format!("{p}bad-stream"), &[]).await,
        "appending nothing",
    );
    invalid(
        s.put(&c, "k", "{}", 0, &[(String::new(), "v".into())])
            .await,
        "an empty index name",
    );
    let crowded: Vec<(String, String)> = (0..=MAX_INDEX_ENTRIES)
        .map(|i| (format!("i{i}"), "v".into()))
        .collect();
    invalid(
        s.put(&c, "k", "{}", 0, &crowded).await,
        "too many index entries",
    );
    let full = &crowded[..MAX_INDEX_ENTRIES];
    assert_eq!(
        s.put(&c, "full", "{}", 0, full).await.unwrap(),
        1,
        "as many as allowed"
    );
    assert!(
        s.get(&c, "k").await.unwrap().is_none(),
        "nothing was written"
    );
}

async fn racing_writers_one_wins(s: &dyn Storage, p: &str) {
    let c = format!("{p}race");
    for round in 0..20 {
        let key = format!("r{round}");
        let created = join_all((0..2).map(|w| {
            let data = format!("{{\"writer\":{w}}}");
            let (c, key) = (c.clone(), key.clone());
            async move { s.put(&c, &key, &data, 0, &[]).await }
        }))
        .await;
        let won = created.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "two creators: exactly one wins ({created:?})");
        let updated = join_all((0..2).map(|w| {
            let data = format!("{{\"update\":{w}}}");
            let (c, key) = (c.clone(), key.clone());
            async move { s.put(&c, &key, &data, 1, &[]).await }
        }))
        .await;
        assert_eq!(
            updated.iter().filter(|r| r.is_ok()).count(),
            1,
            "two writers on one revision: exactly one wins ({updated:?})"
        );
        for lost in updated.iter().filter(|r| r.is_err()) {
            conflict(lost.clone(), "the loser");
        }
        assert_eq!(s.get(&c, &key).await.unwrap().unwrap().revision, 2);
    }
}

async fn parallel_appends_stay_gap_free(s: &dyn Storage, p: &str) {
    const WRITERS: usize = 8;
    const BATCHES: usize = 25;
    const PER_BATCH: usize = 3;
    let stream = format!("{p}parallel");
    let firsts = join_all((0..WRITERS).map(|w| {
        let stream = stream.clone();
        async move {
            let mut firsts = Vec::new();
            for b in 0..BATCHES {
                let batch: Vec<String> = (0..PER_BATCH)
                    .map(|i| format!("{{\"w\":{w},\"b\":{b},\"i\":{i}}}"))
                    .collect();
                firsts.push((s.append(&stream, &batch).await.unwrap(), w, b));
            }
            firsts
        }
    }))
    .await;
    let total = (WRITERS * BATCHES * PER_BATCH) as u64;
    let mut entries = Vec::new();
    loop {
        let after = entries.last().map_or(0, |e: &ash_core::Entry| e.sequence);
        let page = s.read(&stream, after, 100).await.unwrap();
        if page.is_empty() {
            break;
        }
        entries.extend(page);
    }
    let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=total).collect::<Vec<_>>(),
        "unique and gap-free"
    );
    for (first, w, b) in firsts.into_iter().flatten() {
        for i in 0..PER_BATCH {
            let entry = &entries[(first - 1) as usize + i];
            assert_eq!(
                entry.data,
                format!("{{\"w\":{w},\"b\":{b},\"i\":{i}}}"),
                "a batch is contiguous, in order, from the number append returned"
            );
        }
    }
}

fn put(collection: &str, key: &str, data: &str, expected: u64) -> Write {
    Write::Put {
        collection: collection.into(),
        key: key.into(),
        data: data.into(),
        expected,
        index: vec![("tag".into(), "t".into())],
    }
}

fn append(stream: &str, entries: &[&str]) -> Write {
    Write::Append {
        stream: stream.into(),
        entries: entries.iter().map(|e| e.to_string()).collect(),
    }
}

async fn commits_are_all_or_nothing(s: &dyn Storage, p: &str) {
    let (c, log, other) = (
        format!("{p}commit"),
        format!("{p}commit-log"),
        format!("{p}commit-other"),
    );
    s.put(&c, "gone", "{}", 0, &[]).await.unwrap();
    let results = s
        .commit(&[
            put(&c, "a", r#"{"v":1}"#, 0),
            append(&log, &["{}", "{}", "{}"]),
            append(&other, &["{}"]),
            Write::Delete {
                collection: c.clone(),
                key: "gone".into(),
                expected: 1,
            },
            Write::Delete {
                collection: c.clone(),
                key: "never".into(),
                expected: 1,
            },
        ])
        .await
        .unwrap();
    assert_eq!(results, [1, 1, 1, 1, 0], "one result per write");
    assert_eq!(
        s.find(&c, "tag", "t", "", 10).await.unwrap().len(),
        1,
        "its index entries"
    );
    assert_eq!(s.get(&c, "gone").await.unwrap(), None);

    let lost = s
        .commit(&[
            put(&c, "b", "{}", 0),
            append(&log, &["{\"lost\":true}"]),
            put(&c, "a", r#"{"v":"stale"}"#, 5),
        ])
        .await;
    conflict(lost, "a commit with one stale revision");
    assert_eq!(
        s.get(&c, "b").await.unwrap(),
        None,
        "a failed commit writes no document"
    );
    assert_eq!(
        s.read(&log, 3, 10).await.unwrap(),
        [],
        "and appends nothing"
    );
    assert_eq!(s.get(&c, "a").await.unwrap().unwrap().data, r#"{"v":1}"#);
    let next = s.commit(&[append(&log, &["{}"])]).await.unwrap();
    assert_eq!(next, [4], "numbering goes on without a gap");

    invalid(s.commit(&[]).await, "an empty commit");
    invalid(
        s.commit(&[put(&c, "x", "{}", 0), put(&c, "x", "{}", 1)])
            .await,
        "one document twice",
    );
    invalid(
        s.commit(&[append(&log, &["{}"]), append(&log, &["{}"])])
            .await,
        "one stream twice",
    );
    let many: Vec<Write> = (0..=MAX_WRITES)
        .map(|i| put(&c, &format!("m{i}"), "{}", 0))
        .collect();
    invalid(s.commit(&many).await, "too many writes");
    assert_eq!(
        s.get(&c, "m0").await.unwrap(),
        None,
        "an invalid commit writes nothing"
    );
}

async fn racing_commits_write_only_the_winner(s: &dyn Storage, p: &str) {
    let (c, log) = (format!("{p}rc"), format!("{p}rc-log"));
    s.put(&c, "d", "{}", 0, &[]).await.unwrap();
    for round in 1..=20u64 {
        let outcomes = join_all((0..2).map(|w| {
            let writes = [
                put(&c, "d", &format!("{{\"round\":{round},\"w\":{w}}}"), round),
                append(&log, &[&format!("{{\"round\":{round},\"w\":{w}}}")]),
            ];
            async move { s.commit(&writes).await }
        }))
        .await;
        let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "exactly one of two racing commits wins ({outcomes:?})"
        );
        assert_eq!(
            won[0],
            &[round + 1, round],
            "the winner's revision and its entry's number"
        );
    }
    let entries = s.read(&log, 0, 100).await.unwrap();
    assert_eq!(entries.len(), 20, "the losers appended nothing");
    let doc = s.get(&c, "d").await.unwrap().unwrap();
    assert_eq!(doc.revision, 21);
    assert_eq!(
        doc.data, entries[19].data,
        "the document and the stream agree on the winner"
    );
}
