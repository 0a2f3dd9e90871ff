//! Session files and workspace bundles, against real sandboxes: what the agent writes is
//! readable from outside, what is uploaded reaches the agent, and nothing the agent plants
//! (symlinks out, FIFOs) or a client sends (`..`, absolute paths, links out) reaches the host.

mod common;

use base64::Engine;
use common::Server;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn exec(server: &Server, session: &str, command: &str) -> String {
    let out = server.exec(session, command).await;
    assert_eq!(out["exitCode"], 0, "{out}");
    out["stdout"].as_str().unwrap().to_owned()
}

fn listed(list: &Value) -> Vec<&str> {
    let mut paths: Vec<&str> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn what_the_agent_writes_is_listed_read_and_deleted_and_its_traps_stay_shut() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("secret"), "host secret").unwrap();
    exec(
        &server,
        &session,
        &format!(
            "mkdir -p src node_modules/m .cache && echo hi > src/a.txt && echo x > node_modules/m/i.js \
             && echo c > .cache/c && printf '\\377' > bin.dat && mkfifo pipe && touch s.sock \
             && ln -s /etc/passwd passwd && ln -s {} host && ln -s ../../../.. up",
            host_dir.path().display()
        ),
    )
    .await;
    let base = format!("/api/sessions/{session}/files");

    let (status, list) = server.get(&base).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["source"], "sandbox");
    assert_eq!(
        listed(&list),
        [".cache/c", "CLAUDE.md", "ash.toml", "bin.dat", "src/a.txt"]
    );
    let (_, visible) = server.get(&format!("{base}?includeHidden=false")).await;
    assert_eq!(
        listed(&visible),
        ["CLAUDE.md", "ash.toml", "bin.dat", "src/a.txt"]
    );

    let raw = server.raw_get(&format!("{base}/src/a.txt")).await;
    assert_eq!(raw.status(), 200);
    let header = |name: &str| raw.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(header("x-ash-source"), "sandbox");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=\"a.txt\""
    );
    assert_eq!(raw.text().await.unwrap(), "hi\n");
    let (status, text) = server.get(&format!("{base}/src/a.txt?format=json")).await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        json!({"path": "src/a.txt", "content": "hi\n", "size": 3, "source": "sandbox"})
    );

    for (path, status) in [
        ("bin.dat?format=json", 400),
        ("passwd", 400),
        ("host/secret", 400),
        ("up/etc/passwd", 400),
        ("pipe", 400),
        ("src", 400),
        ("src/..%2F..%2F..%2Fetc%2Fpasswd", 400),
        ("missing.txt", 404),
        ("src/a.txt?format=yaml", 400),
    ] {
        let (got, body) = server.get(&format!("{base}/{path}")).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    let (status, body) = server
        .call(reqwest::Method::DELETE, &format!("{base}/src/a.txt"), None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"path": "src/a.txt", "deleted": true}))
    );
    assert_eq!(server.get(&format!("{base}/src/a.txt")).await.0, 404);
    let (status, _) = server
        .call(reqwest::Method::DELETE, &format!("{base}/host"), None)
        .await;
    assert_eq!(status, 200, "deleting a link deletes the link");
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("secret")).unwrap(),
        "host secret"
    );
    let (status, _) = server
        .call(reqwest::Method::DELETE, &format!("{base}/src"), None)
        .await;
    assert_eq!(status, 400, "folders are not deleted");
}

#[tokio::test]
async fn uploaded_files_reach_the_agent_and_bad_ones_get_their_own_error() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let host_dir = tempfile::tempdir().unwrap();
    exec(
        &server,
        &session,
        &format!("ln -s {} out", host_dir.path().display()),
    )
    .await;
    let base = format!("/api/sessions/{session}/files");
    let (status, reply) = server
        .post(
            &base,
            json!({"targetPath": "notes", "files": [
                {"path": "n.txt", "content": b64(b"hello"), "mimeType": "text/plain"},
                {"path": "../../escape.txt", "content": b64(b"x")},
                {"path": "bad.txt", "content": "%%% not base64"},
                {"path": ".DS_Store", "content": b64(b"x")},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["files"].as_array().unwrap();
    assert_eq!(
        results[0],
        json!({"path": "n.txt", "written": true, "size": 5})
    );
    for result in &results[1..] {
        assert_eq!(result["written"], false, "{result}");
        assert!(result["error"].is_string(), "{result}");
    }
    let (_, reply) = server
        .post(
            &base,
            json!({"files": [{"path": "out/planted", "content": b64(b"x")}]}),
        )
        .await;
    assert_eq!(reply["files"][0]["written"], false, "{reply}");
    assert_eq!(std::fs::read_dir(host_dir.path()).unwrap().count(), 0);
    assert_eq!(exec(&server, &session, "cat notes/n.txt").await, "hello");
    assert!(!server.workspace(&session).join("../escape.txt").exists());

    for bad in [json!({"files": []}), json!({"files": "nope"}), json!({})] {
        let (status, body) = server.post(&base, bad.clone()).await;
        assert!(matches!(status, 400 | 422), "{bad}: {status} {body}");
    }
}

#[tokio::test]
async fn what_the_host_writes_belongs_to_the_agent_which_can_change_it() {
    use std::os::unix::fs::MetadataExt;
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let base = format!("/api/sessions/{session}/files");
    let (status, reply) = server
        .post(
            &base,
            json!({"targetPath": "deep/er", "files": [{"path": "n.txt", "content": b64(b"one")}]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let changed = exec(
        &server,
        &session,
        "echo two >> deep/er/n.txt && touch deep/er/new && cat deep/er/n.txt",
    )
    .await;
    assert_eq!(changed, "onetwo\n");
    let workspace = server.workspace(&session);
    let agent = std::fs::metadata(workspace.join("deep/er/new"))
        .unwrap()
        .uid();
    for made_by_host in ["deep", "deep/er", "deep/er/n.txt"] {
        assert_eq!(
            std::fs::metadata(workspace.join(made_by_host))
                .unwrap()
                .uid(),
            agent,
            "{made_by_host}"
        );
    }
}

/// `tar czf` run on the host, so bundles are what a user's own tools make.
fn tar(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .current_dir(dir)
        .args(["czf", "-"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn a_workspace_downloads_as_tar_gz_and_uploads_into_another_session() {
    let server = Server::start().await;
    let from = server.session("hello-agent").await;
    exec(
        &server,
        &from,
        "mkdir -p app && printf '#!/bin/sh\\necho ran\\n' > app/main.py && chmod +x app/main.py \
         && echo KEY=secret > .env && ln -s app/main.py run",
    )
    .await;
    let response = server
        .raw_get(&format!("/api/sessions/{from}/workspace"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let bundle = response.bytes().await.unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    let file = unpacked.path().join("ws.tar.gz");
    std::fs::write(&file, &bundle).unwrap();
    let listing = std::process::Command::new("tar")
        .args(["tzvf"])
        .arg(&file)
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.contains("app/main.py"), "{listing}");
    assert!(listing.contains("run -> app/main.py"), "{listing}");
    assert!(
        !listing.contains(".env"),
        "secrets are not packed: {listing}"
    );

    let to = server.session("hello-agent").await;
    let (status, reply) = server
        .post(
            &format!("/api/sessions/{to}/workspace"),
            json!({"bundle": b64(&bundle)}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["message"], "Workspace restored to live sandbox");
    assert_eq!(
        exec(&server, &to, "./run && test -x app/main.py && readlink run").await,
        "ran\napp/main.py\n"
    );
}

#[tokio::test]
async fn hostile_bundles_are_refused_and_write_nothing() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let made = tempfile::tempdir().unwrap();
    let dir = made.path().join("d");
    std::fs::create_dir_all(dir.join("inner")).unwrap();
    std::fs::write(dir.join("inner/ok.txt"), "ok").unwrap();
    std::fs::write(made.path().join("outside.txt"), "x").unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
    std::os::unix::fs::symlink("../../..", dir.join("inner/up")).unwrap();
    // Two links that each stay inside, chained into one that leads out.
    std::os::unix::fs::symlink("..", dir.join("inner/parent")).unwrap();
    std::os::unix::fs::symlink("inner/parent/..", dir.join("chained")).unwrap();
    // A link that leads out only through the one the agent planted below.
    std::os::unix::fs::symlink("planted/up/..", dir.join("via-agent")).unwrap();
    // A file where the agent has a file of the same name as a folder.
    std::fs::create_dir(dir.join("taken")).unwrap();
    std::fs::write(dir.join("taken/x"), "x").unwrap();
    let bundles = [
        (
            "dot-dot entry",
            tar(&dir, &["-P", "inner/ok.txt", "../outside.txt"]),
        ),
        (
            "absolute entry",
            tar(
                &dir,
                &[
                    "-P",
                    "inner/ok.txt",
                    made.path().join("outside.txt").to_str().unwrap(),
                ],
            ),
        ),
        ("absolute link", tar(&dir, &["inner/ok.txt", "etc"])),
        ("link out", tar(&dir, &["inner/ok.txt", "inner/up"])),
        (
            "chained links",
            tar(&dir, &["inner/ok.txt", "inner/parent", "chained"]),
        ),
        (
            "through the agent's link",
            tar(&dir, &["inner/ok.txt", "via-agent"]),
        ),
        ("a file in the way", tar(&dir, &["inner/ok.txt", "taken"])),
        ("not gzip", b"plain text".to_vec()),
    ];
    exec(
        &server,
        &session,
        "mkdir planted && ln -s .. planted/up && echo file > taken",
    )
    .await;
    let before = exec(&server, &session, "find . | sort").await;
    for (what, bundle) in bundles {
        let (status, body) = server
            .post(
                &format!("/api/sessions/{session}/workspace"),
                json!({"bundle": b64(&bundle)}),
            )
            .await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body["error"].as_str().unwrap().len() > 10, "{what}: {body}");
    }
    assert_eq!(exec(&server, &session, "find . | sort").await, before);
    assert!(!server.workspace(&session).join("../outside.txt").exists());
    for bad in [json!({"bundle": ""}), json!({"bundle": "@@@"}), json!({})] {
        let (status, body) = server
            .post(&format!("/api/sessions/{session}/workspace"), bad.clone())
            .await;
        assert!(matches!(status, 400 | 422), "{bad}: {status} {body}");
    }
}

#[tokio::test]
async fn a_lost_workspace_is_read_from_its_snapshot_and_written_back_for_the_resume() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    exec(&server, &session, "echo kept > kept.txt").await;
    let (status, _) = server
        .post(&format!("/api/sessions/{session}/stop"), json!({}))
        .await;
    assert_eq!(status, 200);
    std::fs::remove_dir_all(server.workspace(&session)).unwrap();
    let base = format!("/api/sessions/{session}/files");

    let (status, list) = server.get(&base).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["source"], "snapshot");
    assert!(listed(&list).contains(&"kept.txt"));
    let raw = server.raw_get(&format!("{base}/kept.txt")).await;
    assert_eq!(raw.headers()["x-ash-source"], "snapshot");

    let (_, reply) = server
        .post(
            &base,
            json!({"files": [{"path": "added.txt", "content": b64(b"new")}]}),
        )
        .await;
    assert_eq!(reply["files"][0]["written"], true, "{reply}");
    let (status, _) = server
        .post(&format!("/api/sessions/{session}/resume"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        exec(&server, &session, "cat kept.txt added.txt").await,
        "kept\nnew"
    );

    assert_eq!(
        server.delete(&format!("/api/sessions/{session}")).await.0,
        200
    );
    assert_eq!(
        server.get(&base).await.0,
        404,
        "an ended session has no files"
    );
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        server
            .get(&format!("/api/sessions/{unknown}/files"))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn the_cli_moves_files_and_workspaces() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let local = tempfile::tempdir().unwrap();
    let notes = local.path().join("notes.md");
    std::fs::write(&notes, "# notes\n").unwrap();
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout.clone()).unwrap()
    };
    ok(&server
        .cli(
            &[
                "session",
                "files",
                "put",
                &session,
                notes.to_str().unwrap(),
                "docs/notes.md",
            ],
            None,
        )
        .await);
    let list = ok(&server
        .cli(&["session", "files", "list", &session], None)
        .await);
    assert!(list.contains("docs/notes.md"), "{list}");
    let got = ok(&server
        .cli(
            &["session", "files", "get", &session, "docs/notes.md"],
            None,
        )
        .await);
    assert_eq!(got, "# notes\n");
    let bundle = local.path().join("ws.tar.gz");
    ok(&server
        .cli(
            &[
                "session",
                "files",
                "download",
                &session,
                "-o",
                bundle.to_str().unwrap(),
            ],
            None,
        )
        .await);
    ok(&server
        .cli(&["session", "files", "rm", &session, "docs/notes.md"], None)
        .await);
    let gone = server
        .cli(
            &["session", "files", "get", &session, "docs/notes.md"],
            None,
        )
        .await;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("404"));
    let restored = ok(&server
        .cli(
            &[
                "session",
                "files",
                "upload",
                &session,
                bundle.to_str().unwrap(),
            ],
            None,
        )
        .await);
    assert!(
        restored.contains("Workspace restored to live sandbox"),
        "{restored}"
    );
    assert_eq!(
        exec(&server, &session, "cat docs/notes.md").await,
        "# notes\n"
    );
}

#[tokio::test]
async fn an_attachment_is_kept_placed_in_the_workspace_and_served_back_and_bad_ones_are_refused() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, made) = server
        .post(
            &format!("/api/sessions/{session}/attachments"),
            json!({"filename": "résumé.txt", "content": b64(b"hello attachment\n"), "mimeType": "text/plain"}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let attachment = &made["attachment"];
    assert_eq!(
        (&attachment["size"], &attachment["messageId"]),
        (&json!(17), &json!("unlinked"))
    );
    let id = attachment["id"].as_str().unwrap();
    // In the workspace, for the agent.
    let out = server.exec(&session, "cat 'attachments/résumé.txt'").await;
    assert_eq!(out["stdout"], "hello attachment\n");
    let (_, listed) = server
        .get(&format!("/api/sessions/{session}/attachments"))
        .await;
    assert_eq!(listed["attachments"].as_array().unwrap().len(), 1);
    let got = reqwest::Client::new()
        .get(format!("{}/api/attachments/{id}", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "text/plain");
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    let disposition = got.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("filename*=UTF-8''r%C3%A9sum%C3%A9.txt"),
        "{disposition}"
    );
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello attachment\n");

    // Hostile names, empty or oversized content, bad ids: a clear 4xx, nothing kept or placed.
    let send = |body: Value| {
        let server = &server;
        let session = session.clone();
        async move {
            server
                .post(&format!("/api/sessions/{session}/attachments"), body)
                .await
        }
    };
    for (name, content, want) in [
        ("../escape.txt", b64(b"x"), 400),
        ("a/b.txt", b64(b"x"), 400),
        ("..", b64(b"x"), 400),
        ("", b64(b"x"), 400),
        ("new\nline", b64(b"x"), 400),
        ("empty.txt", String::new(), 400),
        ("not-base64.txt", "%%%".to_owned(), 400),
        ("big.bin", b64(&vec![7u8; 10 * 1024 * 1024 + 1]), 413),
    ] {
        let (status, body) = send(json!({"filename": name, "content": content})).await;
        assert_eq!(status, want, "{name:?}: {body}");
    }
    let (status, _) =
        send(json!({"filename": "m.txt", "content": b64(b"x"), "messageId": "nope"})).await;
    assert_eq!(status, 400);
    let (status, _) =
        send(json!({"filename": "m.txt", "content": b64(b"x"), "mimeType": "no slash"})).await;
    assert_eq!(status, 400);
    let out = server
        .exec(
            &session,
            "ls attachments; ls escape.txt ../escape.txt 2>/dev/null; true",
        )
        .await;
    assert_eq!(out["stdout"], "résumé.txt\n", "{out}");
    assert_eq!(
        server
            .get(&format!("/api/sessions/{session}/attachments"))
            .await
            .1["attachments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(server.get("/health").await.0, 200);

    // Deleted, it is gone from the API; the workspace copy is the agent's and stays.
    assert_eq!(
        server.delete(&format!("/api/attachments/{id}")).await.0,
        204
    );
    assert_eq!(
        server.delete(&format!("/api/attachments/{id}")).await.0,
        404
    );
    assert_eq!(server.get(&format!("/api/attachments/{id}")).await.0, 404);
    let (status, _) = server
        .post(
            "/api/sessions/00000000-0000-4000-8000-000000000000/attachments",
            json!({"filename": "a.txt", "content": b64(b"x")}),
        )
        .await;
    assert_eq!(status, 404);
}
