//! Redeploys and rollbacks on the whole real stack: three real builds of the Flask app deploy,
//! `conveyor replay` rolls back to the first, `conveyor replay --to previous` redeploys the
//! third, and both the manifest repository's history and `conveyor history` show each step.

use std::time::Duration;

use conveyor_e2e::{new_tag, unquote_tag, Stack, APP, STAGING};

const LIMIT: Duration = Duration::from_secs(600);

fn deployed(stack: &Stack) -> String {
    new_tag(&stack.manifest_repo.show("main", STAGING))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_builds_a_rollback_to_the_first_and_a_redeploy_of_the_third() {
    let stack = Stack::start().await.expect("stack starts");
    let mut tags = Vec::new();
    let mut head = stack.manifest_repo.head("main").unwrap();
    for n in 1..=3 {
        let (commit, _) = if n == 1 {
            stack.push_example_app("flask-app: release 1")
        } else {
            stack.push_change("CHANGES", |t| format!("{t}release {n}\n"), &format!("flask-app: release {n}"))
        };
        let build = stack.wait_build(&commit, LIMIT).await.unwrap();
        assert_eq!(build["state"], "succeeded", "{build}");
        head = stack.wait_manifest_commit(&head, Duration::from_secs(60)).await.unwrap();
        tags.push(commit[..12].to_string());
    }
    assert_eq!(deployed(&stack), tags[2]);

    // Roll back to the first build by tag.
    let (ok, out, err) = stack.conveyor(&["replay", APP, "--env", "staging", "--tag", &tags[0], "--dry-run"]);
    assert!(ok && unquote_tag(&out, &tags[0]).contains(&format!("+    newTag: {}", tags[0])), "{out}{err}");
    println!("$ conveyor replay {APP} --env staging --tag {} --dry-run\n{out}", tags[0]);
    let (ok, out, err) = stack.conveyor(&["replay", APP, "--env", "staging", "--tag", &tags[0]]);
    assert!(ok, "{err}");
    println!("$ conveyor replay {APP} --env staging --tag {}\n{out}", tags[0]);
    assert!(out.starts_with(&format!("queued: rollback {APP}/staging to ")), "{out}");
    head = stack.wait_manifest_commit(&head, Duration::from_secs(60)).await.unwrap();
    assert_eq!(deployed(&stack), tags[0]);
    let message = stack.manifest_repo.message(&head);
    assert!(message.starts_with(&format!("rollback({APP}/staging): ")) && message.contains("Conveyor-Replay: rollback "), "{message}");

    // One step back from there is the third build again.
    let (ok, out, err) = stack.conveyor(&["replay", APP, "--env", "staging", "--to", "previous"]);
    assert!(ok, "{err}");
    println!("$ conveyor replay {APP} --env staging --to previous\n{out}");
    assert!(out.starts_with(&format!("queued: redeploy {APP}/staging to ")), "{out}");
    stack.wait_manifest_commit(&head, Duration::from_secs(60)).await.unwrap();
    assert_eq!(deployed(&stack), tags[2]);

    let (ok, table, err) = stack.conveyor(&["history", APP]);
    assert!(ok, "{err}");
    println!("$ conveyor history {APP}\n{table}");
    let rows: Vec<(String, String)> = table
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[3].to_string(), cols[4].to_string())
        })
        .collect();
    let want: Vec<(String, String)> = [("redeploy", 2), ("rollback", 0), ("build", 2), ("build", 1), ("build", 0)]
        .iter()
        .map(|(k, i)| (k.to_string(), tags[*i].clone()))
        .collect();
    assert_eq!(rows, want, "history, newest first:\n{table}");
    // Refusals name the problem and change nothing.
    for (args, needle) in [
        (vec!["replay", APP, "--env", "staging", "--tag", "0000000000aa"], "no image-built event for flask-app:0000000000aa"),
        (vec!["replay", APP, "--env", "staging", "--seq", "99"], "stream sequence 99 is out of range: the stream holds 1..=5"),
        (vec!["replay", "billing", "--to", "previous"], "unknown app \"billing\""),
    ] {
        let (ok, _, err) = stack.conveyor(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
        println!("$ conveyor {}\n{err}", args.join(" "));
    }
    let log = stack.manifest_repo.log_oneline("main");
    assert_eq!(log.lines().count(), 6, "five deploy commits on the initial one:\n{log}");
}
