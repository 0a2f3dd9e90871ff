//! The second half of the suite: the server's records ([`Store`]) on a backend, as the server
//! uses them — agents, sessions, the log and its turns, keys, credentials, and a copy to
//! another store. Both stores must start empty.

use std::collections::BTreeMap;

use ash_core::{
    AgentName, Attachment, CoreError, Credential, CredentialType, Role, Session, SessionConfig,
    SessionId, SessionStatus, Transition, TurnUsage, UsageCounts, VersionFields, DEFAULT_TENANT,
};
use futures_util::future::join_all;

use crate::{CopyError, SealedKey, Store, TurnMark};

/// Runs every record check on `store`, then copies it into `empty` (of the same backend).
pub async fn run_records(store: &Store, empty: &Store) {
    agents_upsert_and_go(store).await;
    versions_number_up_and_one_is_active(store).await;
    sessions_list_newest_first_and_keep_their_settings(store).await;
    concurrent_appends_stay_gap_free(store).await;
    events_page_filter_and_mark_turns(store).await;
    a_turn_ending_after_a_status_change_keeps_the_status(store).await;
    forks_copy_messages_with_their_numbers(store).await;
    keys_and_credentials(store).await;
    attachments_by_session(store).await;
    usage_ends_with_its_turn_and_is_filtered(store).await;
    queue_items_are_claimed_once_and_retried(store).await;
    dashboard_sign_ins_end_when_they_expire(store).await;
    a_copy_moves_everything_and_checks_the_count(store, empty).await;
}

fn name(n: &str) -> AgentName {
    AgentName::try_from(n.to_owned()).expect("a valid agent name")
}

/// An active session of `agent`, created at `created_at`.
fn session(agent: &str, created_at: &str) -> Session {
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
        config: SessionConfig {
            model: Some("m".into()),
            ..SessionConfig::default()
        },
        created_at: created_at.into(),
        last_active_at: created_at.into(),
        logged_bytes: 0,
    }
}

async fn agents_upsert_and_go(s: &Store) {
    let env = BTreeMap::from([("K".to_owned(), "v".to_owned())]);
    let first = s.upsert_agent(&name("b"), "/p1", &env).await.unwrap();
    let second = s
        .upsert_agent(&name("b"), "/p2", &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!((first.version, second.version), (1, 2), "a redeploy bumps");
    assert_eq!(first.id, second.id, "a redeploy keeps the id");
    let got = s.get_agent(&name("b")).await.unwrap().unwrap();
    assert_eq!((got.path.as_str(), got.env.len()), ("/p2", 0));
    s.upsert_agent(&name("a"), "/a", &env).await.unwrap();
    let names: Vec<String> = s
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["a", "b"], "agents in name order");
    let (c, no_env) = (name("c"), BTreeMap::new());
    let racing = (0..8).map(|_| s.upsert_agent(&c, "/c", &no_env));
    for outcome in join_all(racing).await {
        outcome.expect("racing redeploys all land");
    }
    assert_eq!(s.get_agent(&name("c")).await.unwrap().unwrap().version, 8);
    assert!(s.delete_agent(&name("c")).await.unwrap());
    assert!(!s.delete_agent(&name("c")).await.unwrap());
    assert!(s.get_agent(&name("c")).await.unwrap().is_none());
}

async fn versions_number_up_and_one_is_active(s: &Store) {
    let agent = name("versioned");
    let fields = |prompt: &str| VersionFields {
        system_prompt: Some(prompt.into()),
        knowledge_files: Some(vec!["docs/a.md".into()]),
        ..VersionFields::default()
    };
    assert!(
        s.create_version(&agent, fields("p"), None)
            .await
            .unwrap()
            .is_none(),
        "no agent"
    );
    s.upsert_agent(&agent, "/v", &BTreeMap::new())
        .await
        .unwrap();
    let first = s
        .create_version(&agent, fields("one"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.version_number, first.name.as_str()), (1, "v1"));
    let renamed = VersionFields {
        name: Some("second".into()),
        ..VersionFields::default()
    };
    let second = s
        .create_version(&agent, renamed, Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            second.version_number,
            second.system_prompt.as_deref(),
            &second.knowledge_files
        ),
        (2, Some("one"), &first.knowledge_files),
        "a clone takes what it does not give"
    );
    let missing = s
        .create_version(&agent, VersionFields::default(), Some(9))
        .await;
    assert!(
        matches!(missing, Err(crate::StoreError::Refused(_))),
        "{missing:?}"
    );

    let active = s.activate_version(&agent, 2).await.unwrap().unwrap();
    assert!(active.is_active);
    let got = s.get_agent(&agent).await.unwrap().unwrap();
    assert_eq!(got.active_version, Some(2));
    assert_eq!(s.active_prompt(&got).await.unwrap().as_deref(), Some("one"));
    s.activate_version(&agent, 1).await.unwrap().unwrap();
    let listed = s.list_versions(&agent).await.unwrap().unwrap();
    let shown: Vec<(i64, bool)> = listed
        .iter()
        .map(|v| (v.version_number, v.is_active))
        .collect();
    assert_eq!(shown, [(2, false), (1, true)], "newest first, one active");
    let patched = s
        .patch_version(&agent, 1, fields("new"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (patched.system_prompt.as_deref(), patched.is_active),
        (Some("new"), true)
    );
    assert!(s
        .patch_version(&agent, 7, fields("x"))
        .await
        .unwrap()
        .is_none());
    assert!(s.activate_version(&agent, 7).await.unwrap().is_none());

    // Activating and deleting one version at once: whichever lands second sees the first.
    let (activated, deleted) =
        futures_util::future::join(s.activate_version(&agent, 2), s.delete_version(&agent, 2))
            .await;
    let (activated, deleted) = (activated.unwrap(), deleted.unwrap());
    assert!(deleted, "the delete lands either way");
    let after = s.get_agent(&agent).await.unwrap().unwrap();
    assert_ne!(
        after.active_version,
        Some(2),
        "a deleted version is never active ({activated:?})"
    );
    assert!(s.get_version(&agent, 2).await.unwrap().is_none());

    // Deleting the active version leaves the agent with none.
    assert!(s.delete_version(&agent, 1).await.unwrap());
    assert!(!s.delete_version(&agent, 1).await.unwrap());
    let after = s.get_agent(&agent).await.unwrap().unwrap();
    assert_eq!(after.active_version, None);
    assert_eq!(s.active_prompt(&after).await.unwrap(), None);
    let third = s
        .create_version(&agent, fields("3"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.version_number, 1, "numbers follow the highest kept");
    assert!(s.delete_agent(&agent).await.unwrap());
    s.upsert_agent(&agent, "/v", &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        s.list_versions(&agent).await.unwrap().unwrap(),
        [],
        "a new agent of the name has none of the old one's versions"
    );
    s.create_version(&agent, fields("kept"), None)
        .await
        .unwrap()
        .unwrap();
}

async fn sessions_list_newest_first_and_keep_their_settings(s: &Store) {
    let old = session("a", "2026-01-01T00:00:00.000Z");
    let new = session("b", "2026-01-02T00:00:00.000Z");
    s.insert_session(&old).await.unwrap();
    s.insert_session(&new).await.unwrap();
    let listed = s.list_sessions(None).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|x| x.id).collect();
    assert_eq!(ids, [new.id, old.id], "newest first");
    assert_eq!(
        (&listed[1].env, &listed[1].credential_id, &listed[1].config),
        (&old.env, &old.credential_id, &old.config)
    );
    let patch = SessionConfig {
        betas: Some(vec!["b".into()]),
        ..SessionConfig::default()
    };
    let configured = s.configure_session(old.id, patch).await.unwrap().unwrap();
    assert_eq!(
        s.get_session(old.id).await.unwrap().unwrap().config,
        SessionConfig {
            model: Some("m".into()),
            betas: Some(vec!["b".into()]),
            ..SessionConfig::default()
        }
    );
    assert_eq!(configured.config.betas, Some(vec!["b".into()]));
    let nobody = s.configure_session(SessionId::new(), SessionConfig::default());
    assert_eq!(nobody.await.unwrap(), None, "no such session");
    let of_a = s.list_sessions(Some(&name("a"))).await.unwrap();
    assert_eq!(of_a.iter().map(|x| x.id).collect::<Vec<_>>(), [old.id]);
    let ended = s
        .transition(old.id, Transition::End)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, SessionStatus::Ended);
    assert_eq!(
        s.get_session(old.id).await.unwrap().unwrap().status,
        SessionStatus::Ended
    );
    assert!(
        matches!(
            s.transition(old.id, Transition::Resume).await,
            Err(crate::StoreError::Refused(CoreError::SessionEnded))
        ),
        "an ended session cannot come back"
    );
    assert_eq!(
        s.transition(SessionId::new(), Transition::End)
            .await
            .unwrap(),
        None,
        "no such session"
    );
    assert_eq!(
        s.count_unended_sessions().await.unwrap(),
        [(SessionStatus::Active, 1)],
        "ended sessions are not counted"
    );
}

async fn concurrent_appends_stay_gap_free(s: &Store) {
    let x = session("a", "2026-01-03T00:00:00.000Z");
    s.insert_session(&x).await.unwrap();
    let tasks = (0..40).map(|i| async move {
        let message = [(Role::User, format!("{i}"))];
        let event = [("text", format!("{i}"))];
        s.append(x.id, &message, &event, None).await.unwrap()[0].sequence
    });
    let mut seqs = join_all(tasks).await;
    seqs.sort();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let page = s.list_messages(x.id, 10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert!(page
        .iter()
        .all(|m| m.role == Role::User && m.session_id == x.id.to_string()));
}

/// Logs a turn's `session_start`, marking the session in a turn.
async fn begin_turn(s: &Store, id: SessionId) {
    let start = [("session_start", "{}".to_owned())];
    s.append(id, &[], &start, Some(TurnMark::Begins))
        .await
        .unwrap();
}

/// Logs a turn's `done`, ending the session's turn.
async fn end_turn(s: &Store, id: SessionId) {
    let done = [("done", "{}".to_owned())];
    s.append(id, &[], &done, Some(TurnMark::Ends))
        .await
        .unwrap();
}

async fn events_page_filter_and_mark_turns(s: &Store) {
    let x = session("a", "2026-01-04T00:00:00.000Z");
    s.insert_session(&x).await.unwrap();
    let turn = [
        ("session_start", "{}".to_owned()),
        ("text_delta", "{}".to_owned()),
        ("done", "{}".to_owned()),
    ];
    s.append(x.id, &[], &turn, Some(TurnMark::Ends))
        .await
        .unwrap();
    assert!(s.unfinished_turns().await.unwrap().is_empty(), "it ended");
    begin_turn(s, x.id).await;
    assert_eq!(s.unfinished_turns().await.unwrap(), [x.id], "left open");
    let after = s.list_events(x.id, 1, 10, None).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    let starts = s
        .list_events(x.id, 0, 10, Some("session_start"))
        .await
        .unwrap();
    assert_eq!(
        starts.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 4]
    );
    end_turn(s, x.id).await;
    assert!(s.unfinished_turns().await.unwrap().is_empty(), "closed");
}

async fn a_turn_ending_after_a_status_change_keeps_the_status(s: &Store) {
    let x = session("a", "2026-01-04T00:00:01.000Z");
    s.insert_session(&x).await.unwrap();
    begin_turn(s, x.id).await;
    s.transition(x.id, Transition::Pause).await.unwrap();
    s.append(
        x.id,
        &[(Role::Assistant, "said".to_owned())],
        &[("text_delta", "abcd".to_owned())],
        None,
    )
    .await
    .unwrap();
    end_turn(s, x.id).await;
    let after = s.get_session(x.id).await.unwrap().unwrap();
    assert_eq!(
        after.logged_bytes, 12,
        "the log's bytes, those between the turn's marks included"
    );
    assert_eq!(
        after.status,
        SessionStatus::Paused,
        "the turn's end wrote over the pause"
    );
    assert!(
        after.last_active_at > x.last_active_at,
        "the turn made it active"
    );
    assert!(
        !s.unfinished_turns().await.unwrap().contains(&x.id),
        "and ended its mark"
    );
    s.transition(x.id, Transition::End).await.unwrap();
}

async fn forks_copy_messages_with_their_numbers(s: &Store) {
    let (parent, child) = (
        session("a", "2026-01-05T00:00:00.000Z"),
        session("a", "2026-01-05T00:00:01.000Z"),
    );
    s.insert_session(&parent).await.unwrap();
    s.insert_session(&child).await.unwrap();
    let said: Vec<(Role, String)> = (0..5).map(|i| (Role::Assistant, format!("{i}"))).collect();
    s.append::<&str>(parent.id, &said, &[], None).await.unwrap();
    assert_eq!(s.copy_messages(parent.id, child.id).await.unwrap(), 5);
    let copied = s.list_messages(child.id, 0, 100).await.unwrap();
    let original = s.list_messages(parent.id, 0, 100).await.unwrap();
    assert_eq!(
        copied
            .iter()
            .map(|m| (m.sequence, &m.content))
            .collect::<Vec<_>>(),
        original
            .iter()
            .map(|m| (m.sequence, &m.content))
            .collect::<Vec<_>>()
    );
    assert_ne!(copied[0].id, original[0].id, "copies get ids of their own");
}

async fn keys_and_credentials(s: &Store) {
    assert!(!s.has_api_keys().await.unwrap());
    let first = s
        .insert_api_key("h1", "auto-generated", "ash_AbCd")
        .await
        .unwrap();
    assert!(s.has_api_keys().await.unwrap());
    assert_eq!(
        s.api_key_tenant("h1").await.unwrap().as_deref(),
        Some(DEFAULT_TENANT)
    );
    assert_eq!(s.api_key_tenant("h2").await.unwrap(), None);
    let second = s.insert_api_key("h2", "ci", "ash_EfGh").await.unwrap();
    let listed = s.list_api_keys().await.unwrap();
    assert_eq!(listed, [first.clone(), second.clone()]);
    assert_eq!(listed[0].key_prefix, "ash_AbCd••••");
    assert!(!s.delete_api_key("no-such-id").await.unwrap());
    assert!(s.delete_api_key(&second.id).await.unwrap());
    assert_eq!(
        s.api_key_tenant("h2").await.unwrap(),
        None,
        "a deleted key is refused"
    );
    assert_eq!(s.list_api_keys().await.unwrap(), [first]);

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
    s.insert_credential(&credential, &sealed).await.unwrap();
    assert_eq!(
        s.list_credentials().await.unwrap(),
        std::slice::from_ref(&credential)
    );
    let (got, got_sealed) = s.get_credential("c1").await.unwrap().unwrap();
    assert_eq!((got, got_sealed), (credential.clone(), sealed.clone()));
    s.touch_credential("c1").await.unwrap();
    assert!(s.list_credentials().await.unwrap()[0]
        .last_used_at
        .is_some());
    let spare = Credential {
        id: "c2".into(),
        ..credential
    };
    s.insert_credential(&spare, &sealed).await.unwrap();
    assert!(s.delete_credential("c2").await.unwrap());
    assert!(!s.delete_credential("c2").await.unwrap());
    assert!(s.get_credential("c2").await.unwrap().is_none());
}

async fn a_copy_moves_everything_and_checks_the_count(from: &Store, to: &Store) {
    let long = session("a", "2026-01-06T00:00:00.000Z");
    from.insert_session(&long).await.unwrap();
    let frames: Vec<(String, String)> = (0..2_500)
        .map(|i| ("text_delta".to_owned(), format!("{{\"n\":{i}}}")))
        .collect();
    for batch in frames.chunks(1000) {
        from.append(long.id, &[], batch, None).await.unwrap();
    }
    let source = from.count().await.unwrap();
    assert_eq!(
        (
            source.agents,
            source.agent_versions,
            source.sessions,
            source.api_keys,
            source.credentials,
            source.usage,
            source.queue
        ),
        (3, 1, 10, 1, 1, 3, 3)
    );
    assert_eq!((source.messages, source.events), (51, 2_554));

    let reported = std::sync::atomic::AtomicU64::new(0);
    let copied = from
        .copy_to(to, &|n, _| {
            reported.store(n, std::sync::atomic::Ordering::Relaxed)
        })
        .await
        .unwrap();
    assert_eq!(copied, source, "the count check");
    assert_eq!(
        reported.into_inner(),
        source.total(),
        "progress reached the end"
    );
    assert_eq!(
        to.list_sessions(None).await.unwrap(),
        from.list_sessions(None).await.unwrap()
    );
    assert_eq!(
        to.list_events(long.id, 2_000, 1_000, None).await.unwrap(),
        from.list_events(long.id, 2_000, 1_000, None).await.unwrap()
    );
    assert_eq!(
        to.list_agents().await.unwrap(),
        from.list_agents().await.unwrap()
    );
    assert_eq!(
        to.api_key_tenant("h1").await.unwrap().as_deref(),
        Some(DEFAULT_TENANT)
    );
    assert!(to.get_credential("c1").await.unwrap().is_some());
    let of_a = to.list_sessions(Some(&name("a"))).await.unwrap();
    assert_eq!(of_a.len(), 8, "index entries are rebuilt");
    let of_b = crate::UsageFilter {
        agent: Some(name("b")),
        ..Default::default()
    };
    assert_eq!(
        to.usage_stats(&of_b).await.unwrap(),
        from.usage_stats(&of_b).await.unwrap(),
        "usage is found by its index after a copy"
    );

    let again = from.copy_to(to, &|_, _| {}).await.unwrap_err();
    assert!(matches!(again, CopyError::NotEmpty(_)), "{again}");
    assert_eq!(
        to.count().await.unwrap(),
        copied,
        "a refused copy writes nothing"
    );
}

async fn usage_ends_with_its_turn_and_is_filtered(s: &Store) {
    let (one, two) = (
        session("a", "2026-02-01T00:00:00.000Z"),
        session("b", "2026-02-01T00:00:00.000Z"),
    );
    let turn = |session: &Session, at: &str, tokens: u64| TurnUsage {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.into(),
        session_id: session.id,
        agent_name: session.agent_name.clone(),
        counts: UsageCounts {
            input_tokens: tokens,
            output_tokens: 1,
            messages: 1,
            compute_seconds: 0.5,
            ..UsageCounts::default()
        },
        created_at: at.into(),
    };
    let early = turn(&one, "2026-02-01T00:00:01.000Z", 10);
    let late = turn(&one, "2026-02-01T00:00:03.000Z", 20);
    let other = turn(&two, "2026-02-01T00:00:02.000Z", 40);
    for (session, usage) in [(&one, &early), (&two, &other), (&one, &late)] {
        if s.get_session(session.id).await.unwrap().is_none() {
            s.insert_session(session).await.unwrap();
        }
        let start = [("session_start", "{}".to_owned())];
        s.append(session.id, &[], &start, Some(TurnMark::Begins))
            .await
            .unwrap();
        let done = [("done", "{}".to_owned())];
        s.append_with_usage(session.id, &[], &done, Some(TurnMark::Ends), Some(usage))
            .await
            .unwrap();
    }
    let all = crate::UsageFilter::default();
    let events = s.list_usage(&all, 100).await.unwrap();
    assert_eq!(events.len(), 12, "four kinds of each of three turns");
    let order: Vec<&str> = events
        .iter()
        .step_by(4)
        .map(|e| e.created_at.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "2026-02-01T00:00:03.000Z",
            "2026-02-01T00:00:02.000Z",
            "2026-02-01T00:00:01.000Z"
        ],
        "newest first"
    );
    assert_eq!(
        s.list_usage(&all, 5).await.unwrap().len(),
        5,
        "the limit counts events"
    );
    let of_one = crate::UsageFilter {
        session: Some(one.id),
        ..Default::default()
    };
    let stats = s.usage_stats(&of_one).await.unwrap();
    assert_eq!(
        (stats.input_tokens, stats.messages, stats.compute_seconds),
        (30, 2, 1.0)
    );
    let of_b = crate::UsageFilter {
        agent: Some(name("b")),
        ..Default::default()
    };
    assert_eq!(s.usage_stats(&of_b).await.unwrap().input_tokens, 40);
    let window = crate::UsageFilter {
        after: Some("2026-02-01T00:00:02.000Z".into()),
        before: Some("2026-02-01T00:00:03.000Z".into()),
        ..Default::default()
    };
    assert_eq!(
        s.usage_stats(&window).await.unwrap().input_tokens,
        40,
        "after is in, before is out"
    );
    assert_eq!(s.usage_stats(&all).await.unwrap().input_tokens, 70);
}

async fn queue_items_are_claimed_once_and_retried(s: &Store) {
    let item = |prompt: &str, priority: u32, at: &str| ash_core::QueueItem {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.into(),
        session_id: None,
        agent_name: name("a"),
        prompt: prompt.into(),
        status: ash_core::QueueStatus::Pending,
        priority,
        retry_count: 0,
        max_retries: 1,
        error: None,
        created_at: at.into(),
        started_at: None,
        completed_at: None,
        retry_after: None,
        claimed_by: None,
    };
    let old = item("old", 0, "2026-03-01T00:00:01.000Z");
    let new = item("new", 0, "2026-03-01T00:00:02.000Z");
    let urgent = item("urgent", 7, "2026-03-01T00:00:03.000Z");
    for it in [&old, &new, &urgent] {
        s.insert_queue_item(it).await.unwrap();
    }
    let order: Vec<String> = s
        .pending_queue_items()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.prompt)
        .collect();
    assert_eq!(order, ["urgent", "old", "new"], "priority, then age");
    let listed = s.list_queue(None, 2).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.prompt.as_str()).collect::<Vec<_>>(),
        ["urgent", "new"],
        "listed newest first"
    );

    // Two servers claim one item at once: exactly one gets it.
    let (first, second) = futures_util::future::join(
        s.claim_queue_item(&old, "n1"),
        s.claim_queue_item(&old, "n2"),
    )
    .await;
    let winners: Vec<_> = [first.unwrap(), second.unwrap()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let winner = winners[0].claimed_by.clone().unwrap();
    let loser = if winner == "n1" { "n2" } else { "n1" };
    let failed = crate::Tried::Failed {
        error: "e".into(),
        wait: std::time::Duration::from_secs(60),
    };
    assert!(
        s.finish_queue_item(&old, loser, failed)
            .await
            .unwrap()
            .is_none(),
        "only its holder ends a try"
    );
    let failed = crate::Tried::Failed {
        error: "first".into(),
        wait: std::time::Duration::from_secs(60),
    };
    let retried = s
        .finish_queue_item(&old, &winner, failed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            retried.status,
            retried.retry_count,
            retried.error.as_deref()
        ),
        (ash_core::QueueStatus::Pending, 1, Some("first"))
    );
    assert!(retried.retry_after.is_some(), "it waits before its retry");
    s.claim_queue_item(&old, &winner).await.unwrap().unwrap();
    let failed = crate::Tried::Failed {
        error: "second".into(),
        wait: std::time::Duration::from_secs(60),
    };
    let out = s
        .finish_queue_item(&old, &winner, failed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (out.status, out.retry_count),
        (ash_core::QueueStatus::Failed, 1),
        "no retries left"
    );

    // A crash leaves an item processing: only its server's start puts it back.
    s.claim_queue_item(&new, "crashed").await.unwrap().unwrap();
    assert_eq!(s.requeue_claimed("other").await.unwrap(), 0);
    assert_eq!(s.requeue_claimed("crashed").await.unwrap(), 1);
    let back = s.get_queue_item(&new.id).await.unwrap().unwrap();
    assert_eq!(
        (back.status, back.retry_count, back.claimed_by),
        (ash_core::QueueStatus::Pending, 0, None)
    );

    let cancelled = s.cancel_queue_item(&urgent.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, ash_core::QueueStatus::Cancelled);
    assert!(matches!(
        s.cancel_queue_item(&urgent.id).await,
        Err(crate::StoreError::Refused(_))
    ));
    assert!(s.cancel_queue_item("none").await.unwrap().is_none());
    assert!(
        s.claim_queue_item(&urgent, "n1").await.unwrap().is_none(),
        "a cancelled item never runs"
    );
    let counts = s.count_queue().await.unwrap();
    let of = |status| counts.iter().find(|(st, _)| *st == status).unwrap().1;
    assert_eq!(
        (
            of(ash_core::QueueStatus::Pending),
            of(ash_core::QueueStatus::Failed),
            of(ash_core::QueueStatus::Cancelled)
        ),
        (1, 1, 1)
    );
}

async fn dashboard_sign_ins_end_when_they_expire(s: &Store) {
    let sign_in = |expires_at: &str| crate::DashboardSession {
        key_hash: "k".into(),
        csrf_token: "c".into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        expires_at: expires_at.into(),
    };
    let lasting = sign_in("2999-01-01T00:00:00.000Z");
    s.insert_dashboard_session("t1", &lasting).await.unwrap();
    s.insert_dashboard_session("t2", &sign_in("2000-01-01T00:00:00.000Z"))
        .await
        .unwrap();
    assert_eq!(s.dashboard_session("t1").await.unwrap(), Some(lasting));
    assert_eq!(s.dashboard_session("t2").await.unwrap(), None, "expired");
    assert!(
        !s.delete_dashboard_session("t2").await.unwrap(),
        "an expired one is deleted when read"
    );
    assert!(s.delete_dashboard_session("t1").await.unwrap());
    assert_eq!(s.dashboard_session("t1").await.unwrap(), None);
}

async fn attachments_by_session(s: &Store) {
    let session = SessionId::new();
    let attachment = |id: &str, created_at: &str| Attachment {
        id: id.into(),
        tenant_id: DEFAULT_TENANT.into(),
        message_id: "unlinked".into(),
        session_id: session,
        filename: format!("{id}.txt"),
        mime_type: "text/plain".into(),
        size: 3,
        created_at: created_at.into(),
    };
    let (old, new) = (
        attachment("a1", "2026-01-01T00:00:00.000Z"),
        attachment("a2", "2026-01-02T00:00:00.000Z"),
    );
    s.insert_attachment(&new).await.unwrap();
    s.insert_attachment(&old).await.unwrap();
    assert_eq!(
        s.list_attachments(session).await.unwrap(),
        [old.clone(), new.clone()]
    );
    assert_eq!(s.list_attachments(SessionId::new()).await.unwrap(), []);
    assert_eq!(s.get_attachment("a2").await.unwrap(), Some(new));
    assert!(s.delete_attachment("a2").await.unwrap());
    assert!(!s.delete_attachment("a2").await.unwrap());
    assert_eq!(s.get_attachment("a2").await.unwrap(), None);
    assert_eq!(s.list_attachments(session).await.unwrap(), [old]);
}
