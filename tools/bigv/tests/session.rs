//! The worked session in docs/cli.md, run for real: each command is run
//! against a brain with simulated nodes, and its output must be what the
//! document shows (`UPDATE_GOLDEN=1` rewrites the document's block).

mod common;

use std::path::Path;

use bigv_brain::model::Admission;
use common::Harness;

const SHOWN_ENDPOINT: &str = "http://brain.example:8080";
const START: &str = "<!-- session:start -->\n```console\n";
const END: &str = "```\n<!-- session:end -->";

struct Step<'a> {
    /// Environment shown before the command (and set for it).
    env: &'a [(&'a str, &'a str)],
    args: &'a [&'a str],
    stdin: Option<&'a str>,
}

fn step<'a>(args: &'a [&'a str]) -> Step<'a> {
    Step {
        env: &[],
        args,
        stdin: None,
    }
}

fn quote(arg: &str) -> String {
    if arg.contains(' ') {
        format!("\"{arg}\"")
    } else {
        arg.to_owned()
    }
}

#[test]
fn the_worked_session_in_the_docs_is_real() {
    let mut h = Harness::start();
    h.nodes(2, 1, Admission::Accepted);
    let endpoint = h.endpoint.clone();
    let steps = [
        Step {
            env: &[("BIGV_USER", "admin"), ("BIGV_PASS", common::SU_PASSWORD)],
            args: &["--endpoint", &endpoint, "login"],
            stdin: None,
        },
        step(&["admin", "show", "heads"]),
        step(&["admin", "show", "storage", "pools"]),
        step(&["admin", "add", "account", "alice"]),
        step(&[
            "admin",
            "add",
            "image",
            "bookworm",
            "2G",
            "--description",
            "Debian 12",
        ]),
        step(&["admin", "add", "vlan", "1"]),
        step(&["admin", "add", "ip", "range", "192.0.2.0/24", "1"]),
        step(&["admin", "add", "vlan", "2", "--usage-type", "management"]),
        step(&["admin", "add", "ip", "range", "198.51.100.0/24", "2"]),
        Step {
            env: &[("BIGV_NEW_PASS", "alices-password")],
            args: &["add", "user", "alice", "--email", "alice@example.com"],
            stdin: None,
        },
        step(&[
            "grant",
            "privilege",
            "account_admin",
            "on",
            "alice",
            "to",
            "alice",
        ]),
        Step {
            env: &[("BIGV_USER", "alice"), ("BIGV_PASS", "alices-password")],
            args: &["--profile", "alice", "login", "--make-current"],
            stdin: None,
        },
        step(&["show", "images"]),
        step(&["show", "storage"]),
        step(&[
            "add",
            "server",
            "web1",
            "--image",
            "bookworm",
            "--memory",
            "2G",
            "--disc",
            "ssd:30G",
            "--root-password",
            "correct-horse",
        ]),
        step(&["show", "server", "web1"]),
        step(&["add", "discs", "web1", "sata:50G"]),
        step(&["update", "disc", "web1", "disc-2", "+10G"]),
        step(&["update", "disc", "web1", "disc-2", "20G"]),
        step(&["update", "server", "web1", "--memory", "4G"]),
        step(&["show", "servers", "--table"]),
        step(&["console", "web1", "--vnc"]),
        step(&[
            "add", "server", "web2", "--image", "bookworm", "--disc", "gold:10G",
        ]),
        step(&["shutdown", "server", "web1"]),
        step(&[
            "schedule",
            "backups",
            "--start",
            "03:00",
            "--capacity",
            "7",
            "web1",
            "disc-1",
        ]),
        Step {
            env: &[],
            args: &["delete", "server", "web1"],
            stdin: Some("y\n"),
        },
        step(&["show", "account"]),
        step(&["restore", "server", "web1"]),
        step(&["start", "server", "web1"]),
        step(&["show", "servers"]),
    ];
    let mut transcript = String::new();
    for s in &steps {
        let shown_env: String = s
            .env
            .iter()
            .map(|(k, v)| {
                let v = if k.ends_with("PASS") { "…" } else { v };
                format!("{k}={v} ")
            })
            .collect();
        let shown_args: Vec<String> = s.args.iter().map(|a| quote(a)).collect();
        transcript.push_str(&format!("$ {shown_env}bigv {}\n", shown_args.join(" ")));
        if s.args.first() == Some(&"shutdown") {
            // Let the reconciler finish imaging and start it first.
            let id = h.brain().db.read().vms.values().next().map(|v| v.id);
            h.running_on(id.expect("a server exists"));
        }
        let mut cmd = h.command(s.args);
        for (k, v) in s.env {
            cmd.env(k, v);
        }
        let run = match s.stdin {
            Some(input) => h.bigv_stdin_cmd(cmd, input),
            None => h.run(cmd),
        };
        let mut stderr = run.stderr.clone();
        if let Some(input) = s.stdin {
            // The terminal would have echoed the answer.
            stderr = stderr.replacen("(y/N) \n", &format!("(y/N) {input}"), 1);
        }
        transcript.push_str(&stderr);
        transcript.push_str(&run.stdout);
        if run.code != 0 {
            transcript.push_str(&format!("(exit {})\n", run.code));
        }
    }
    let transcript =
        common::normalise(&transcript, &endpoint).replace("http://BRAIN", SHOWN_ENDPOINT);

    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let (start, end) = (
        text.find(START).expect("docs/cli.md has the session block") + START.len(),
        text.find(END)
            .expect("docs/cli.md has the end of the session block"),
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let updated = format!("{}{transcript}{}", &text[..start], &text[end..]);
        std::fs::write(&doc, updated).unwrap();
        return;
    }
    assert_eq!(
        &text[start..end],
        transcript,
        "docs/cli.md's session differs from a real run (UPDATE_GOLDEN=1 rewrites it)"
    );
}
