//! The SQLite store against a real database file in a temp dir.

use std::collections::BTreeMap;

use ash_core::{
    AgentName, Credential, CredentialType, Role, Session, SessionId, SessionStatus, DEFAULT_TENANT,
};
use ash_store::{SealedKey, Store};

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ash.db")).await.unwrap();
    (dir, store)
}

fn name(n: &str) -> AgentName {
    AgentName::try_from(n.to_owned()).unwrap()
}

fn session(agent: &str) -> Session {
    Session {
        id: SessionId::new(),
        tenant_id: DEFAULT_TENANT.into(),
        agent_name: name(agent),
        sandbox_id: "sb".into(),
        status: SessionStatus::Active,
        runner_id: None,
        parent_session_id: None,
        env: BTreeMap::from([("K".to_owned(), "v".to_owned())]),
        credential_id: Some("c1".into()),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        last_active_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

#[tokio::test]
async fn redeploying_an_agent_bumps_its_version_and_replaces_env() {
    let (_dir, store) = open().await;
    let env = BTreeMap::from([("K".to_owned(), "v".to_owned())]);
    let first = store.upsert_agent(&name("a"), "/p1", &env).await.unwrap();
    let second = store
        .upsert_agent(&name("a"), "/p2", &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!((first.version, second.version), (1, 2));
    assert_eq!(first.id, second.id);
    let got = store.get_agent(&name("a")).await.unwrap().unwrap();
    assert_eq!((got.path.as_str(), got.env.len()), ("/p2", 0));
}

#[tokio::test]
async fn concurrent_appends_get_unique_gap_free_sequences_for_messages_and_events() {
    let (_dir, store) = open().await;
    let s = session("a");
    store.insert_session(&s).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let message = [(Role::User, format!("{i}"))];
                let event = [("text", format!("{i}"))];
                store.append(s.id, &message, &event).await.unwrap()[0].sequence
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let page = store.list_messages(s.id, 10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
}

#[tokio::test]
async fn sessions_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ash.db");
    let s = session("a");
    {
        let store = Store::open(&path).await.unwrap();
        store.insert_session(&s).await.unwrap();
        store
            .set_session_status(s.id, SessionStatus::Ended)
            .await
            .unwrap();
    }
    let store = Store::open(&path).await.unwrap();
    let listed = store.list_sessions(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, SessionStatus::Ended);
    assert_eq!(listed[0].env, s.env);
    assert_eq!(listed[0].credential_id, s.credential_id);
    assert_eq!(
        store
            .list_sessions(Some(&name("other")))
            .await
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn api_keys_are_found_by_hash_only() {
    let (_dir, store) = open().await;
    store.insert_api_key("h1", "auto-generated").await.unwrap();
    assert_eq!(
        store.api_key_tenant("h1").await.unwrap().as_deref(),
        Some(DEFAULT_TENANT)
    );
    assert_eq!(store.api_key_tenant("h2").await.unwrap(), None);
    assert_eq!(store.count_api_keys().await.unwrap(), 1);
}

#[tokio::test]
async fn a_garbage_file_is_refused_with_the_path_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ash.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&path)
        .await
        .err()
        .expect("garbage must not open");
    assert!(
        err.to_string().contains("ash.db") || err.to_string().contains("not a database"),
        "{err}"
    );
}

#[tokio::test]
async fn events_are_paged_filtered_by_type_and_open_turns_found() {
    let (_dir, store) = open().await;
    let s = session("a");
    store.insert_session(&s).await.unwrap();
    let events = [
        ("session_start", "{}".to_owned()),
        ("text_delta", "{}".to_owned()),
        ("done", "{}".to_owned()),
    ];
    store.append(s.id, &[], &events).await.unwrap();
    assert!(store.unfinished_turns().await.unwrap().is_empty());
    store
        .append(s.id, &[], &[("session_start", "{}".to_owned())])
        .await
        .unwrap();
    assert_eq!(store.unfinished_turns().await.unwrap(), vec![s.id]);
    let after = store.list_events(s.id, 1, 10, None).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let starts = store
        .list_events(s.id, 0, 10, Some("session_start"))
        .await
        .unwrap();
    assert_eq!(
        starts.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 4]
    );
}

#[tokio::test]
async fn credentials_keep_their_sealed_key_and_never_list_it() {
    let (_dir, store) = open().await;
    let credential = Credential {
        id: "c1".into(),
        kind: CredentialType::Openai,
        label: "team".into(),
        active: true,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        last_used_at: None,
    };
    let sealed = SealedKey {
        ciphertext: "Y2lwaGVy".into(),
        nonce: "bm9uY2U=".into(),
        tag: "dGFn".into(),
        salt: "c2FsdA==".into(),
    };
    store.insert_credential(&credential, &sealed).await.unwrap();
    assert_eq!(
        store.list_credentials().await.unwrap(),
        std::slice::from_ref(&credential)
    );
    let (got, got_sealed) = store.get_credential("c1").await.unwrap().unwrap();
    assert_eq!((got, got_sealed), (credential, sealed));
    store.touch_credential("c1").await.unwrap();
    let used = store.list_credentials().await.unwrap();
    assert!(used[0].last_used_at.is_some());
    assert!(store.delete_credential("c1").await.unwrap());
    assert!(!store.delete_credential("c1").await.unwrap());
    assert!(store.get_credential("c1").await.unwrap().is_none());
}
