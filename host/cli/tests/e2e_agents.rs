//! An agent's named versions and its files through the REST API, end to end: the real `ash`
//! binary, real bwrap sandboxes (each session's `CLAUDE.md` read from inside its sandbox),
//! real SQLite.

mod common;

use base64::Engine;
use common::Server;
use serde_json::{json, Value};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What a new session of `agent` (with `extra` in its create body) has as its `CLAUDE.md`.
async fn prompt_of_new_session(server: &Server, agent: &str, extra: Value) -> String {
    let mut body = json!({"agent": agent});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, created) = server.post("/api/sessions", body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap();
    let out = server.exec(id, "cat CLAUDE.md").await;
    out["stdout"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn versions_are_numbered_cloned_and_activated_and_new_sessions_start_with_the_active_prompt()
{
    let server = Server::start().await;
    let (status, body) = server
        .deploy("writer", &[("CLAUDE.md", "folder prompt")])
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent"]["activeVersion"], Value::Null);
    assert_eq!(
        server.get("/api/agents/writer/versions").await,
        (200, json!({"versions": []}))
    );

    let (status, first) = server
        .post(
            "/api/agents/writer/versions",
            json!({"systemPrompt": "prompt one", "releaseNotes": "first", "knowledgeFiles": ["docs/a.md"]}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let first = &first["version"];
    assert_eq!(
        (&first["versionNumber"], &first["name"], &first["isActive"]),
        (&json!(1), &json!("v1"), &json!(false))
    );
    let (_, second) = server
        .post(
            "/api/agents/writer/versions",
            json!({"cloneFrom": 1, "name": "copy"}),
        )
        .await;
    assert_eq!(
        (
            &second["version"]["versionNumber"],
            &second["version"]["systemPrompt"],
            &second["version"]["knowledgeFiles"]
        ),
        (&json!(2), &json!("prompt one"), &json!(["docs/a.md"])),
        "a clone takes what it does not give"
    );
    let (status, third) = server
        .post(
            "/api/agents/writer/versions",
            json!({"cloneFrom": first["id"], "systemPrompt": "prompt three"}),
        )
        .await;
    assert_eq!(status, 201, "{third}");
    assert_eq!(third["version"]["versionNumber"], 3, "cloned by id");

    assert_eq!(
        prompt_of_new_session(&server, "writer", json!({})).await,
        "folder prompt",
        "no version is active yet"
    );
    assert_eq!(
        server
            .post("/api/agents/writer/versions/3/activate", json!({}))
            .await,
        (200, json!({"activated": true, "versionNumber": 3}))
    );
    assert_eq!(
        prompt_of_new_session(&server, "writer", json!({})).await,
        "prompt three"
    );
    assert_eq!(
        prompt_of_new_session(&server, "writer", json!({"systemPrompt": "mine"})).await,
        "mine",
        "a session's own prompt comes first"
    );
    let (_, listed) = server.get("/api/agents/writer/versions").await;
    let shown: Vec<(i64, bool)> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["versionNumber"].as_i64().unwrap(),
                v["isActive"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, [(3, true), (2, false), (1, false)]);
    assert_eq!(
        server.get("/api/agents/writer").await.1["agent"]["activeVersion"],
        3
    );
    let by_id = format!(
        "/api/agents/writer/versions/{}",
        first["id"].as_str().unwrap()
    );
    assert_eq!(server.get(&by_id).await.1["version"]["versionNumber"], 1);

    let (status, patched) = server
        .call(
            reqwest::Method::PATCH,
            "/api/agents/writer/versions/3",
            Some(json!({"systemPrompt": "prompt three, revised"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (&patched["version"]["isActive"], &patched["version"]["name"]),
        (&json!(true), &json!("v3"))
    );
    assert_eq!(
        prompt_of_new_session(&server, "writer", json!({})).await,
        "prompt three, revised"
    );

    // Deleting the active version leaves the agent with none: the folder's prompt again.
    assert_eq!(server.delete("/api/agents/writer/versions/3").await.0, 204);
    assert_eq!(
        server.get("/api/agents/writer").await.1["agent"]["activeVersion"],
        Value::Null
    );
    assert_eq!(
        prompt_of_new_session(&server, "writer", json!({})).await,
        "folder prompt"
    );
    assert_eq!(server.get("/api/agents/writer/versions/3").await.0, 404);
}

#[tokio::test]
async fn bad_version_requests_get_a_clear_4xx_and_change_nothing() {
    let server = Server::start().await;
    server.deploy("v", &[("CLAUDE.md", "x")]).await;
    server
        .post("/api/agents/v/versions", json!({"systemPrompt": "kept"}))
        .await;
    let unknown = uuid::Uuid::new_v4();
    let long_notes = "n".repeat(10_001);
    for (method, path, body, want) in [
        ("GET", "/api/agents/v/versions/9".to_owned(), None, 404),
        (
            "GET",
            format!("/api/agents/v/versions/{unknown}"),
            None,
            404,
        ),
        ("GET", "/api/agents/v/versions/latest".to_owned(), None, 400),
        ("GET", "/api/agents/nobody/versions".to_owned(), None, 404),
        ("GET", "/api/agents/nobody/versions/1".to_owned(), None, 404),
        (
            "POST",
            "/api/agents/v/versions/9/activate".to_owned(),
            Some(json!({})),
            404,
        ),
        (
            "POST",
            "/api/agents/nobody/versions".to_owned(),
            Some(json!({})),
            404,
        ),
        (
            "POST",
            "/api/agents/v/versions".to_owned(),
            Some(json!({"cloneFrom": 9})),
            400,
        ),
        (
            "POST",
            "/api/agents/v/versions".to_owned(),
            Some(json!({"cloneFrom": true})),
            400,
        ),
        (
            "POST",
            "/api/agents/v/versions".to_owned(),
            Some(json!({"releaseNotes": long_notes})),
            400,
        ),
        (
            "POST",
            "/api/agents/v/versions".to_owned(),
            Some(json!({"knowledgeFiles": ["../up.md"]})),
            400,
        ),
        (
            "POST",
            "/api/agents/v/versions".to_owned(),
            Some(json!({"name": 5})),
            422,
        ),
        (
            "PATCH",
            "/api/agents/v/versions/9".to_owned(),
            Some(json!({"name": "x"})),
            404,
        ),
        ("DELETE", "/api/agents/v/versions/9".to_owned(), None, 404),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, reply) = server.call(method.clone(), &path, body).await;
        assert_eq!(status, want, "{method} {path}: {reply}");
        assert!(reply["error"].is_string(), "{method} {path}: {reply}");
    }
    let (status, reply) = server.raw_post("/api/agents/v/versions", "{not json").await;
    assert_eq!(status, 400, "{reply}");
    let (_, listed) = server.get("/api/agents/v/versions").await;
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["versions"][0]["systemPrompt"], "kept");

    // A deleted agent's versions go with it: a new agent of the name has none.
    server.delete("/api/agents/v").await;
    server.deploy("v", &[("CLAUDE.md", "x")]).await;
    assert_eq!(
        server.get("/api/agents/v/versions").await.1,
        json!({"versions": []})
    );
}

#[tokio::test]
async fn an_agents_files_are_listed_read_written_and_deleted_each_change_a_new_version() {
    let server = Server::start().await;
    server
        .deploy("files", &[("CLAUDE.md", "# files"), ("docs/a.md", "alpha")])
        .await;
    let (status, listed) = server.get("/api/agents/files/files").await;
    assert_eq!(status, 200, "{listed}");
    let mut paths: Vec<(&str, i64)> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["size"].as_i64().unwrap()))
        .collect();
    paths.sort();
    assert_eq!(paths, [("CLAUDE.md", 7), ("docs/a.md", 5)]);
    assert_eq!(
        server.get("/api/agents/files/files/docs/a.md").await,
        (
            200,
            json!({"path": "docs/a.md", "content": "alpha", "size": 5})
        )
    );
    let raw = server
        .raw_get("/api/agents/files/files/docs/a.md?format=raw")
        .await;
    assert_eq!(
        raw.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    assert_eq!(raw.text().await.unwrap(), "alpha");

    let (status, written) = server
        .post(
            "/api/agents/files/files",
            json!({"files": [{"path": "docs/b.md", "content": b64("beta")}]}),
        )
        .await;
    assert_eq!(
        (status, &written),
        (200, &json!({"written": 1, "version": 2}))
    );
    let session = server.session("files").await;
    assert_eq!(
        server.exec(&session, "cat docs/a.md docs/b.md").await["stdout"],
        "alphabeta",
        "a new session starts from the new version"
    );

    assert_eq!(
        server.delete("/api/agents/files/files/docs/a.md").await,
        (200, json!({"deleted": true, "version": 3}))
    );
    assert_eq!(server.get("/api/agents/files/files/docs/a.md").await.0, 404);
    let later = server.session("files").await;
    assert_eq!(server.exec(&later, "ls docs").await["stdout"], "b.md\n");
    assert_eq!(
        server.exec(&session, "cat docs/a.md").await["stdout"],
        "alpha",
        "a running session keeps the workspace it started with"
    );

    // Bad input gets a clear 4xx and makes no version.
    let ungranted = "[sandbox]\nsyscalls = [\"ptrace\"]\n";
    for (method, path, body, want) in [
        ("DELETE", "/api/agents/files/files/CLAUDE.md", None, 400),
        ("DELETE", "/api/agents/files/files/docs/none.md", None, 404),
        ("DELETE", "/api/agents/files/files/docs", None, 400),
        ("GET", "/api/agents/files/files/docs", None, 400),
        (
            "GET",
            "/api/agents/files/files/docs/b.md?format=yaml",
            None,
            400,
        ),
        ("GET", "/api/agents/nobody/files", None, 404),
        (
            "POST",
            "/api/agents/nobody/files",
            Some(json!({"files": [{"path": "a", "content": ""}]})),
            404,
        ),
        (
            "POST",
            "/api/agents/files/files",
            Some(json!({"files": []})),
            400,
        ),
        (
            "POST",
            "/api/agents/files/files",
            Some(json!({"files": [{"path": "../up", "content": ""}]})),
            400,
        ),
        (
            "POST",
            "/api/agents/files/files",
            Some(json!({"files": [{"path": "x", "content": "%%%"}]})),
            400,
        ),
        (
            "POST",
            "/api/agents/files/files",
            Some(json!({"files": [{"path": "ash.toml", "content": b64("backend = 7")}]})),
            400,
        ),
        (
            "POST",
            "/api/agents/files/files",
            Some(json!({"files": [{"path": "ash.toml", "content": b64(ungranted)}]})),
            403,
        ),
        (
            "POST",
            "/api/agents/files/files",
            Some(json!({"files": [{"path": "docs/b.md/deeper", "content": ""}]})),
            400,
        ),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, reply) = server.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path}: {reply}");
        assert!(reply["error"].is_string(), "{method} {path}: {reply}");
    }
    assert_eq!(
        server.get("/api/agents/files").await.1["agent"]["version"],
        3
    );
    assert_eq!(
        server.get("/api/agents/files/files/CLAUDE.md").await.1["content"],
        "# files"
    );
}

#[tokio::test]
async fn a_path_mode_agents_files_are_read_within_its_folder_and_never_changed() {
    let folder = tempfile::tempdir().unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "host secret").unwrap();
    std::fs::write(folder.path().join("CLAUDE.md"), "# local").unwrap();
    std::os::unix::fs::symlink(secret.path(), folder.path().join("leak.txt")).unwrap();
    // Control: the link does reach the host's file, for anyone who follows it.
    assert_eq!(
        std::fs::read_to_string(folder.path().join("leak.txt")).unwrap(),
        "host secret"
    );
    let roots = folder.path().parent().unwrap().to_str().unwrap().to_owned();
    let server = Server::start_with_env(&[("ASH_DEPLOY_ROOTS", &roots)]).await;
    let (status, body) = server
        .post(
            "/api/agents",
            json!({"name": "local", "path": folder.path()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        server.get("/api/agents/local/files/CLAUDE.md").await.1["content"],
        "# local"
    );
    for format in ["json", "raw"] {
        let response = server
            .raw_get(&format!("/api/agents/local/files/leak.txt?format={format}"))
            .await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 400, "{format}: {text}");
        assert!(!text.contains("host secret"), "{text}");
    }
    let (status, reply) = server
        .post(
            "/api/agents/local/files",
            json!({"files": [{"path": "new.md", "content": b64("x")}]}),
        )
        .await;
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("deploy again"),
        "{reply}"
    );
    assert_eq!(
        server.delete("/api/agents/local/files/CLAUDE.md").await.0,
        409
    );
    assert!(!folder.path().join("new.md").exists());
    assert!(folder.path().join("CLAUDE.md").exists());
}
