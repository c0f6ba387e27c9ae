//! Logging in, profiles, tokens, API keys, SSH keys, users and
//! privileges, with the real `bigv` against a real brain.

mod common;

use std::os::unix::fs::PermissionsExt;

use bigv_brain::model::{Level, Session, Target};
use common::{Harness, SU_PASSWORD, SU_USER, golden, normalise};
use reqwest::Method;

#[test]
fn login_keeps_a_private_token_that_later_commands_use() {
    let h = Harness::start();
    let run = h
        .bigv_env(
            &["login"],
            &[("BIGV_USER", SU_USER), ("BIGV_PASS", SU_PASSWORD)],
        )
        .ok();
    assert!(run.stderr.contains("Logged in"), "{run:?}");
    let token = std::fs::read_to_string(h.profile_file("token")).unwrap();
    let mode = std::fs::metadata(h.profile_file("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(h.profile_file("user"))
            .unwrap()
            .trim(),
        SU_USER
    );
    // The token is a live session of admin.
    let (status, session) = h.api(
        Method::GET,
        "unused",
        &format!("/session/{}", token.trim()),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(session["username"], SU_USER);

    let run = h.bigv(&["show", "user"]).ok();
    assert!(run.stdout.starts_with("admin (user "), "{run:?}");
    // No password was kept, and show config masks the token.
    assert!(!h.profile_file("password").exists());
    let run = h.bigv(&["show", "config"]).ok();
    assert!(!run.stdout.contains(token.trim()), "{run:?}");
    assert!(run.stdout.contains("token"), "{run:?}");
}

#[test]
fn bad_or_missing_credentials_are_exit_54_with_a_clear_line() {
    let h = Harness::start();
    let run = h
        .bigv_env(
            &["login"],
            &[("BIGV_USER", SU_USER), ("BIGV_PASS", "wrong-password")],
        )
        .fails(54);
    assert!(run.stderr.contains("bad username or password"), "{run:?}");
    assert!(!h.profile_file("token").exists());

    let run = h.bigv(&["show", "user"]).fails(54);
    assert!(run.stderr.contains("bigv login"), "{run:?}");

    // An unreachable brain is 150 (API) or 50 (auth).
    let run = h
        .bigv_env(
            &["show", "user"],
            &[("BIGV_ENDPOINT", "http://127.0.0.1:9"), ("BIGV_TOKEN", "x")],
        )
        .fails(150);
    assert!(run.stderr.contains("cannot reach"), "{run:?}");
    h.bigv_env(
        &["login"],
        &[
            ("BIGV_ENDPOINT", "http://127.0.0.1:9"),
            ("BIGV_USER", "a"),
            ("BIGV_PASS", "b"),
        ],
    )
    .fails(50);
}

/// Ends every session in the store, as if they had all run out.
fn expire_sessions(h: &Harness) {
    h.write(|tx| {
        let keys: Vec<String> = tx.model().sessions.keys().cloned().collect();
        for k in keys {
            tx.delete::<Session>(k)?;
        }
        Ok(())
    });
}

#[test]
fn an_expired_session_is_renewed_from_stored_credentials_or_explained() {
    let h = Harness::start();
    h.bigv_env(
        &["login", "--save-password"],
        &[("BIGV_USER", SU_USER), ("BIGV_PASS", SU_PASSWORD)],
    )
    .ok();
    let mode = std::fs::metadata(h.profile_file("password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read_to_string(h.profile_file("token")).unwrap();
    expire_sessions(&h);
    h.bigv(&["show", "user"]).ok();
    let after = std::fs::read_to_string(h.profile_file("token")).unwrap();
    assert_ne!(before, after, "a new token should have been stored");

    // Without a stored password, BIGV_PASS renews it; with neither, a
    // clear message.
    h.bigv(&["update", "config", "--unset", "password"]).ok();
    expire_sessions(&h);
    let run = h.bigv(&["show", "user"]).fails(54);
    assert!(run.stderr.contains("expired"), "{run:?}");
    h.bigv_env(&["show", "user"], &[("BIGV_PASS", SU_PASSWORD)])
        .ok();
}

#[test]
fn api_keys_are_made_used_as_tokens_and_deleted() {
    let h = Harness::start();
    h.login_su();
    let run = h.bigv(&["add", "api", "key", "--label", "ci"]).ok();
    let token = run.stdout.trim().to_owned();
    assert!(token.starts_with("apikey."), "{run:?}");

    // As --token and as BIGV_TOKEN, with no login at all.
    let run = h
        .bigv_env(
            &["--token", &token, "show", "user"],
            &[("BIGV_CONFIG_DIR", "/nonexistent")],
        )
        .ok();
    assert!(run.stdout.starts_with("admin"), "{run:?}");
    h.bigv_env(&["show", "user"], &[("BIGV_TOKEN", &token)])
        .ok();
    h.bigv_env(&["show", "user"], &[("BIGV_TOKEN", "apikey.wrong")])
        .fails(54);

    let run = h.bigv(&["show", "api", "keys", "--table"]).ok();
    assert!(run.stdout.contains("ci"), "{run:?}");
    let keys = h.get(&h.su(), "/api_keys");
    assert_eq!(keys.as_array().unwrap().len(), 1);

    // Deleting asks first; "no" changes nothing (exit 5).
    h.bigv_stdin(&["delete", "api", "key", "ci"], "n\n")
        .fails(5);
    assert_eq!(h.get(&h.su(), "/api_keys").as_array().unwrap().len(), 1);
    h.bigv_stdin(&["delete", "api", "key", "ci"], "y\n").ok();
    assert_eq!(h.get(&h.su(), "/api_keys").as_array().unwrap().len(), 0);
    h.bigv_env(&["show", "user"], &[("BIGV_TOKEN", &token)])
        .fails(54);
}

#[test]
fn ssh_keys_are_added_once_and_removed_by_comment() {
    let h = Harness::start();
    h.login_su();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDqD4Ar9d2mvyM3ghn9iGlYSM1L6j5C2Qfm0lJ7lJxXk me@laptop";
    h.bigv(&["add", "key", key]).ok();
    let run = h.bigv(&["add", "key", key]).ok();
    assert!(run.stderr.contains("already has"), "{run:?}");
    let user = h.get(&h.su(), "/users/admin");
    assert_eq!(user["authorized_keys"].as_str().unwrap().trim(), key);
    let run = h.bigv(&["show", "keys"]).ok();
    assert_eq!(run.stdout.trim(), key);

    // Not a key: refused before anything is sent.
    let run = h
        .bigv(&["add", "key", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAA"])
        .fails(7);
    assert!(run.stderr.contains("private key"), "{run:?}");

    h.bigv(&["delete", "key", "me@laptop"]).ok();
    let user = h.get(&h.su(), "/users/admin");
    assert_eq!(user["authorized_keys"].as_str().unwrap().trim(), "");
    h.bigv(&["delete", "key", "me@laptop"]).fails(7);
}

#[test]
fn cluster_privileges_are_granted_shown_and_revoked() {
    let h = Harness::start();
    h.login_su();
    h.user("bob", "bobs-password", Level::ClusterAdmin, Target::Cluster);
    h.user(
        "carol",
        "carols-password",
        Level::ClusterAdmin,
        Target::Cluster,
    );
    // Take carol's away, then give it back through the CLI.
    h.bigv(&["revoke", "privilege", "cluster_admin", "from", "carol"])
        .ok();
    assert_eq!(
        h.get(&h.su(), "/users/carol/privileges")
            .as_array()
            .unwrap()
            .len(),
        0
    );
    h.bigv(&["privilege", "grant", "cluster_admin", "to", "carol"])
        .ok();
    let privs = h.get(&h.su(), "/users/carol/privileges");
    assert_eq!(privs[0]["level"], "cluster_admin");
    assert_eq!(privs[0]["creating_username"], "admin");

    let run = h
        .bigv(&["show", "privileges", "--for-user", "carol", "--table"])
        .ok();
    golden("privileges.table", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["show", "privileges", "--for-user", "carol"]).ok();
    assert_eq!(run.stdout, "• carol: cluster_admin on the cluster\n");

    // Revoking what was never granted is a 404-style error.
    h.bigv(&["revoke", "privilege", "cluster_su", "from", "carol"])
        .fails(156);
    // A bad level never reaches the brain.
    let run = h
        .bigv(&["grant", "privilege", "king", "to", "carol"])
        .fails(7);
    assert!(run.stderr.contains("not a privilege level"), "{run:?}");
}

#[test]
fn exit_codes_for_400_403_and_404() {
    let h = Harness::start();
    h.login_su();
    // 404: an unknown user.
    let run = h.bigv(&["show", "user", "nobody"]).fails(156);
    assert_eq!(run.stderr.trim(), "bigv: user nobody was not found");
    // 400: the brain's field message, named.
    let run = h.bigv(&["admin", "add", "vlan", "5000"]).fails(157);
    assert_eq!(
        run.stderr.trim(),
        "bigv: num: must be less than or equal to 4094"
    );
    // 403: a cluster_admin may not create cluster users (cluster_su only).
    h.user("bob", "bobs-password", Level::ClusterAdmin, Target::Cluster);
    let bob = h.token_for("bob");
    let run = h
        .bigv_env(
            &[
                "admin",
                "add",
                "user",
                "eve",
                "cluster_admin",
                "--password",
                "evespassword",
            ],
            &[("BIGV_TOKEN", &bob)],
        )
        .fails(155);
    assert!(run.stderr.contains("permission denied"), "{run:?}");
    // 7: bad input caught before any request.
    let run = h
        .bigv(&["update", "disc", "web1", "disc-1", "lots"])
        .fails(7);
    assert!(run.stderr.contains("\"lots\" is not a size"), "{run:?}");
    let run = h.bigv(&["show", "server", "web 1"]).fails(7);
    assert!(run.stderr.contains("not a valid server name"), "{run:?}");
    // Usage errors from the parser are 7 too; help is 0.
    h.bigv(&["show", "server"]).fails_parse(7);
    assert_eq!(h.bigv(&["add"]).code, 0);
    assert_eq!(h.bigv(&["--help"]).code, 0);
}

trait ParseFail {
    fn fails_parse(self, code: i32);
}

impl ParseFail for common::Run {
    fn fails_parse(self, code: i32) {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stderr.contains("Usage:"), "{self:?}");
    }
}

#[test]
fn config_is_kept_per_profile_with_flags_over_env_over_files() {
    let h = Harness::start();
    h.bigv(&[
        "--user",
        "bob",
        "--account",
        "alice",
        "update",
        "config",
        "--group",
        "prod",
    ])
    .ok();
    let dir = h.config_dir().join("profiles/default");
    assert_eq!(std::fs::read_to_string(dir.join("user")).unwrap(), "bob\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("group")).unwrap(),
        "prod\n"
    );
    let run = h.bigv(&["show", "config", "--json"]).ok();
    let v = run.json();
    assert_eq!(v["user"]["value"], "bob");
    assert_eq!(v["user"]["source"], "profile");
    assert_eq!(v["endpoint"]["source"], "environment");
    let run = h
        .bigv_env(
            &["--user", "carol", "show", "config", "--json"],
            &[("BIGV_USER", "dave")],
        )
        .ok();
    assert_eq!(run.json()["user"]["value"], "carol");
    let run = h
        .bigv_env(&["show", "config", "--json"], &[("BIGV_USER", "dave")])
        .ok();
    assert_eq!(run.json()["user"]["value"], "dave");

    // Another profile is separate, and can become the current one.
    h.bigv(&[
        "--profile",
        "work",
        "--user",
        "erin",
        "update",
        "config",
        "--make-current",
    ])
    .ok();
    let run = h.bigv(&["show", "config", "--json"]).ok();
    assert_eq!(run.json()["profile"], "work");
    assert_eq!(run.json()["user"]["value"], "erin");
    h.bigv(&["update", "config", "--unset", "colour"]).fails(7);
    h.bigv(&["update", "config"]).fails(7);
}

#[test]
fn completions_and_the_manual_are_generated() {
    let h = Harness::start();
    for shell in ["bash", "zsh", "fish"] {
        let run = h.bigv(&["completions", shell]).ok();
        assert!(run.stdout.contains("bigv"), "{shell}: {run:?}");
        assert!(run.stdout.contains("shutdown"), "{shell}");
    }
    let run = h.bigv(&["man"]).ok();
    assert!(
        run.stdout.starts_with(".ie") || run.stdout.contains(".TH bigv"),
        "{run:?}"
    );
}

#[test]
fn users_are_created_and_change_their_passwords() {
    let h = Harness::start();
    h.login_su();
    h.bigv(&[
        "add",
        "user",
        "bob",
        "--email",
        "bob@example.com",
        "--password",
        "bobs-first-password",
    ])
    .ok();
    let bob = h.get(&h.su(), "/users/bob");
    assert_eq!(bob["email"], "bob@example.com");
    let run = h.bigv(&["add", "user", "bob2"]).fails(7);
    assert!(run.stderr.contains("BIGV_NEW_PASS"), "{run:?}");
    let run = h
        .bigv(&["add", "user", "bad name", "--password", "whatever-password"])
        .fails(157);
    assert!(
        run.stderr
            .contains("username: may contain only letters and digits"),
        "{run:?}"
    );

    // bob logs in in his own profile and changes his password.
    let bob_env = [("BIGV_USER", "bob"), ("BIGV_PASS", "bobs-first-password")];
    h.bigv_env(&["--profile", "bob", "login"], &bob_env).ok();
    h.bigv_env(
        &["--profile", "bob", "update", "user"],
        &[("BIGV_NEW_PASS", "bobs-second-password")],
    )
    .ok();
    h.bigv_env(&["--profile", "bob", "login"], &bob_env)
        .fails(54);
    h.bigv_env(
        &["--profile", "bob", "login"],
        &[("BIGV_USER", "bob"), ("BIGV_PASS", "bobs-second-password")],
    )
    .ok();
}
