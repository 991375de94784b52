//! The console in a real headless Chromium (Debian's chromium + chromium-driver over WebDriver)
//! against the real stack: a `git push` appears on the builds page without a reload and its
//! log arrives live and whole (the test step's last line has no newline); the staging cell
//! shows the new tag; a promotion to production and a rollback are made through the page,
//! each after its diff was shown and confirmed, and land as manifest commits; keyboard use,
//! labels and a phone-width screen work; an action with a wrong token is refused with the
//! API's message and changes nothing; a build is cancelled, and a failed push retried, from its
//! page. Screenshots go to the test's temp dir (and to
//! `$CONVEYOR_SCREENSHOTS_DIR`, which is how `docs/console-*.png` are made).

use std::time::{Duration, Instant};

use conveyor_e2e::{unquote_tag, Stack, APP, PRODUCTION, STAGING};
use conveyor_proto::EVENTS_STREAM;
use conveyor_testkit::{copy_tree, repo_root, TestBrowser};
use fantoccini::{key::Key, Client, Locator};
use serde_json::{json, Value};

const MARKER: &str = "tests-done-without-a-newline";

/// Runs `script` (a function body returning a value) until it returns something truthy.
async fn wait_js(c: &Client, what: &str, limit: Duration, script: &str, args: Vec<Value>) -> Value {
    let start = Instant::now();
    loop {
        let v = c.execute(script, args.clone()).await.unwrap_or(Value::Null);
        let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
        if truthy {
            return v;
        }
        if start.elapsed() > limit {
            let page = c.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
            panic!("timed out after {limit:?} waiting for {what}; the page shows:\n{}", page.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn shot(browser: &TestBrowser, stack: &Stack, name: &str) {
    let path = stack.dir.path().join("screenshots").join(format!("console-{name}.png"));
    browser.screenshot(&path).await;
    if let Some(dir) = std::env::var_os("CONVEYOR_SCREENSHOTS_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&path, std::path::Path::new(&dir).join(format!("console-{name}.png"))).unwrap();
    }
}

async fn cell_tag(c: &Client, env: &str) -> String {
    let v = c
        .execute(
            "const e = document.querySelector(`[data-cell=\"${arguments[0]}\"]`); return e ? e.dataset.tag : null",
            vec![json!(format!("{APP}/{env}"))],
        )
        .await
        .unwrap();
    v.as_str().unwrap_or_default().to_string()
}

async fn wait_cell_tag(c: &Client, stack: &Stack, env: &str, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while cell_tag(c, env).await != tag {
        if Instant::now() > deadline {
            let api = reqwest::get(format!("{}/api/cd/environments", stack.console_url)).await.unwrap().text().await.unwrap();
            let page = c.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
            let dbg = c.execute("return JSON.stringify([state.view, performance.getEntriesByType('resource').slice(-8).map(e => [e.name, Math.round(e.startTime), Math.round(e.responseEnd)])])", vec![]).await.unwrap_or_default();
            panic!(
                "the {env} cell never showed {tag}; /api/cd/environments says:\n{api}\npage state: {dbg}\nthe page shows:\n{}",
                page.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens the confirmation of `action` in the staging or production cell and returns the diff shown.
async fn open_confirmation(c: &Client, env: &str, action: &str) -> String {
    click(c, &format!("[data-cell=\"{APP}/{env}\"] [data-action=\"{action}\"]")).await;
    wait_js(c, "the confirmation dialog", Duration::from_secs(30), "return document.getElementById('confirm').open", vec![]).await;
    c.find(Locator::Css("#confirm-diff")).await.unwrap().text().await.unwrap()
}

/// Waits until the build page shows the build in `state`.
async fn wait_build_state(c: &Client, state: &str, limit: Duration) {
    wait_js(
        c,
        &format!("the build page to show the build {state}"),
        limit,
        "const s = document.querySelector('#build-fields [data-state]'); return s && s.dataset.state === arguments[0]",
        vec![json!(state)],
    )
    .await;
}

/// The lines of `text` that are not empty, without `\r`.
fn lines(text: &str) -> Vec<String> {
    text.replace('\r', "").lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_shows_live_and_is_promoted_and_rolled_back_through_the_console() {
    let stack = Stack::start().await.expect("the stack starts");
    let browser = TestBrowser::start(1280, 1000).await;
    let c = &browser.client;
    c.goto(&format!("{}/#/builds", stack.console_url)).await.unwrap();
    wait_js(c, "the builds page", Duration::from_secs(20), "return document.getElementById('builds-body')", vec![]).await;

    // The token, typed once; it is never in the URL.
    c.find(Locator::Css("#token-input")).await.unwrap().send_keys(&stack.api_token).await.unwrap();
    c.find(Locator::Css("#name-input")).await.unwrap().send_keys("alice").await.unwrap();
    click(c, "#token-save").await;
    wait_js(c, "the token to be set", Duration::from_secs(5), "return !document.getElementById('token-set').hidden", vec![]).await;
    assert!(!c.current_url().await.unwrap().as_str().contains(&stack.api_token));

    // Push 1: the example app, whose test step ends with a line that has no newline.
    copy_tree(&repo_root().join("examples/flask-app"), &stack.dev.path);
    let pipeline = std::fs::read_to_string(stack.dev.path.join(".conveyor.yml")).unwrap();
    let test_line = pipeline.lines().find(|l| l.starts_with("test:")).expect("the example has a test command").to_string();
    stack.dev.write(".conveyor.yml", &pipeline.replace(&test_line, &format!("{test_line} && printf '{MARKER}'")));
    let commit1 = stack.dev.commit_all("flask-app: first version");
    stack.dev.push();
    let tag1 = commit1[..12].to_string();

    // It appears on the open page, no reload.
    let id = wait_js(
        c,
        "the pushed build on the builds page",
        Duration::from_secs(60),
        "const r = [...document.querySelectorAll('#builds-body tr')].find(r => r.textContent.includes(arguments[0])); return r ? r.dataset.buildId : null",
        vec![json!(tag1)],
    )
    .await;
    let id = id.as_str().unwrap().to_string();
    click(c, &format!("#builds-body tr[data-build-id=\"{id}\"] a")).await;

    // Its log arrives while it runs.
    let api_build = |id: String| {
        let url = format!("{}/builds/{id}", stack.ci_url);
        async move { reqwest::get(url).await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut seen_live = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let page = c
            .execute(
                "const l = document.getElementById('build-log'); return l ? [l.textContent, l.dataset.complete === 'true'] : ['', false]",
                vec![],
            )
            .await
            .unwrap();
        let (text, complete) = (page[0].as_str().unwrap_or_default().to_string(), page[1].as_bool().unwrap_or(false));
        if complete {
            break;
        }
        if !text.trim().is_empty() && !seen_live {
            let state = api_build(id.clone()).await["state"].as_str().unwrap_or_default().to_string();
            seen_live = state == "running" || state == "queued";
        }
        assert!(Instant::now() < deadline, "the build's log never completed on the page:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_live, "log lines were on the page while the build was still running");
    let build = api_build(id.clone()).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    wait_build_state(c, "succeeded", Duration::from_secs(10)).await;
    let page_log = c.find(Locator::Css("#build-log")).await.unwrap().text().await.unwrap();
    let api_log = reqwest::get(format!("{}/builds/{id}/logs", stack.ci_url)).await.unwrap().text().await.unwrap();
    assert!(lines(&api_log).contains(&MARKER.to_string()), "the API's log has the test's last line:\n{api_log}");
    assert_eq!(lines(&page_log), lines(&api_log), "the page streamed the whole log");
    let steps = c.find(Locator::Css("#build-steps")).await.unwrap().text().await.unwrap();
    for step in ["checkout", "build", "test", "smoke", "push", "publish"] {
        assert!(steps.contains(step), "step {step} on the page:\n{steps}");
    }
    let fields = c.find(Locator::Css("#build-fields")).await.unwrap().text().await.unwrap();
    assert!(fields.contains(build["digest"].as_str().unwrap()) && fields.contains(&commit1), "{fields}");
    let trace = build["trace_id"].as_str().expect("the build has a trace");
    let href = c.find(Locator::Css("#build-fields .trace-link")).await.unwrap().attr("href").await.unwrap().unwrap();
    assert_eq!(href, format!("{}/trace/{trace}", stack.jaeger_url));
    shot(&browser, &stack, "build").await;

    // The staging cell shows the new tag (policy auto); production holds (manual).
    c.goto(&format!("{}/#/deploys", stack.console_url)).await.unwrap();
    wait_cell_tag(c, &stack, "staging", &tag1).await;
    let production = c.find(Locator::Css(&format!("[data-cell=\"{APP}/production\"]"))).await.unwrap().text().await.unwrap();
    assert!(production.contains("Held: manual policy"), "{production}");

    // Promote to production through the page: the diff first, then the commit.
    let before = stack.manifest_repo.head("main").unwrap();
    let diff = open_confirmation(c, "staging", "promote:production").await;
    assert!(unquote_tag(&diff, &tag1).contains(&tag1) && diff.contains("production"), "the diff names the tag and the overlay:\n{diff}");
    assert_eq!(stack.manifest_repo.head("main").unwrap(), before, "a dry run commits nothing");
    shot(&browser, &stack, "confirm").await;
    click(c, "#confirm-ok").await;
    wait_cell_tag(c, &stack, "production", &tag1).await;
    let head = stack.manifest_repo.head("main").unwrap();
    assert_ne!(head, before);
    assert!(unquote_tag(&stack.manifest_repo.show("main", PRODUCTION), &tag1).contains(&format!("newTag: {tag1}")));
    let message = stack.manifest_repo.message(&head);
    assert!(message.contains("Conveyor-Promotion: ") && message.contains(" by alice"), "{message}");

    // Push 2 reaches staging; a rollback through the page takes staging back to push 1.
    let (commit2, _) = stack.push_change("README.md", |t| format!("{t}\nA second version.\n"), "flask-app: second version");
    let tag2 = commit2[..12].to_string();
    wait_cell_tag(c, &stack, "staging", &tag2).await;
    shot(&browser, &stack, "deploys").await;
    let before = stack.manifest_repo.head("main").unwrap();
    let diff = open_confirmation(c, "staging", "rollback").await;
    let plain = unquote_tag(&unquote_tag(&diff, &tag1), &tag2);
    let changed =
        |sign: char, tag: &str| plain.lines().any(|l| l.starts_with(sign) && l.trim_start_matches(sign).trim() == format!("newTag: {tag}"));
    assert!(changed('-', &tag2) && changed('+', &tag1), "the diff takes staging from {tag2} back to {tag1}:\n{diff}");
    click(c, "#confirm-ok").await;
    wait_cell_tag(c, &stack, "staging", &tag1).await;
    let head = stack.manifest_repo.head("main").unwrap();
    assert_ne!(head, before);
    assert!(unquote_tag(&stack.manifest_repo.show("main", STAGING), &tag1).contains(&format!("newTag: {tag1}")));
    assert!(stack.manifest_repo.message(&head).contains("Conveyor-Replay: rollback "));

    // The staging history lists the two builds and the rollback.
    click(c, &format!("[data-cell=\"{APP}/staging\"] [data-action=\"history\"]")).await;
    wait_js(
        c,
        "three history rows",
        Duration::from_secs(30),
        "return document.querySelectorAll('#history-body tr[data-tag]').length >= 3",
        vec![],
    )
    .await;
    let history = c.find(Locator::Css("#history")).await.unwrap().text().await.unwrap();
    assert!(history.contains("rollback by alice") && history.contains(&tag2), "{history}");
    shot(&browser, &stack, "history").await;

    // Every control has a name a screen reader reads.
    c.goto(&format!("{}/#/deploys", stack.console_url)).await.unwrap();
    wait_cell_tag(c, &stack, "production", &tag1).await;
    let unnamed = c
        .execute(
            "return [...document.querySelectorAll('button, input, select, a[href]')].filter(e => !e.closest('[hidden]')).filter(e => {
               const label = e.id && document.querySelector(`label[for=\"${e.id}\"]`);
               return !((e.getAttribute('aria-label') || e.textContent || '').trim() || (label && label.textContent.trim()));
             }).map(e => e.outerHTML)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unnamed, json!([]), "controls without an accessible name");

    // Keyboard only: Tab reaches production's redeploy button, Enter opens its diff, Escape
    // cancels, and nothing is committed.
    let before = stack.manifest_repo.head("main").unwrap();
    c.execute("document.getElementById('nav-deploys').focus()", vec![]).await.unwrap();
    let target = format!("[data-cell=\"{APP}/production\"] [data-action=\"redeploy\"]");
    let mut reached = false;
    for _ in 0..80 {
        c.active_element().await.unwrap().send_keys(&char::from(Key::Tab).to_string()).await.unwrap();
        let on = c.execute("return document.activeElement.matches(arguments[0])", vec![json!(target)]).await.unwrap();
        if on == json!(true) {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab reaches {target}");
    c.active_element().await.unwrap().send_keys(&char::from(Key::Enter).to_string()).await.unwrap();
    wait_js(c, "the dialog, opened from the keyboard", Duration::from_secs(30), "return document.getElementById('confirm').open", vec![])
        .await;
    let inside = c.execute("return document.getElementById('confirm').contains(document.activeElement)", vec![]).await.unwrap();
    assert_eq!(inside, json!(true), "focus moves into the dialog");
    c.active_element().await.unwrap().send_keys(&char::from(Key::Escape).to_string()).await.unwrap();
    wait_js(c, "the dialog to close on Escape", Duration::from_secs(10), "return !document.getElementById('confirm').open", vec![]).await;

    // A wrong token: refused with the API's message, and nothing changes.
    let events = stack.nats.stream_messages(EVENTS_STREAM).await.len();
    click(c, "#token-forget").await;
    c.find(Locator::Css("#token-input")).await.unwrap().send_keys("not-the-token").await.unwrap();
    click(c, "#token-save").await;
    click(c, &target).await;
    let alert = wait_js(
        c,
        "the refusal",
        Duration::from_secs(30),
        "const a = document.getElementById('alert'); return !a.hidden && a.textContent",
        vec![],
    )
    .await;
    assert!(alert.as_str().unwrap().contains("the API token does not match"), "{alert}");
    let open = c.execute("return document.getElementById('confirm').open", vec![]).await.unwrap();
    assert_eq!(open, json!(false), "no confirmation for a refused action");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.manifest_repo.head("main").unwrap(), before, "nothing committed");
    assert_eq!(stack.nats.stream_messages(EVENTS_STREAM).await.len(), events, "nothing published");
    assert_eq!(cell_tag(c, "production").await, tag1);

    // A phone-width screen: nothing wider than the screen but the scrollable tables.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{}/#/deploys", stack.console_url)).await.unwrap();
    wait_cell_tag(c, &stack, "staging", &tag1).await;
    let fits = c.execute("return document.documentElement.scrollWidth <= window.innerWidth", vec![]).await.unwrap();
    assert_eq!(fits, json!(true), "the deploys page fits a phone-width screen");
    shot(&browser, &stack, "deploys-phone").await;
    c.set_window_size(1280, 1000).await.unwrap();
    c.goto(&format!("{}/#/builds", stack.console_url)).await.unwrap();
    wait_js(c, "two builds listed", Duration::from_secs(20), "return document.querySelectorAll('#builds-body tr').length >= 2", vec![])
        .await;
    shot(&browser, &stack, "builds").await;
    browser.close().await;
}

/// The build page's own actions: *Cancel build* on a running build, and *Retry push* on a
/// build whose registry push failed (the registry was down), which then succeeds without
/// rebuilding.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_is_cancelled_and_a_failed_push_retried_from_its_page() {
    let mut stack = Stack::start_with(&[("CONVEYOR_STEP_ATTEMPTS", "1".to_string())]).await.expect("the stack starts");
    let browser = TestBrowser::start(1280, 1000).await;
    let c = &browser.client;
    c.goto(&format!("{}/#/builds", stack.console_url)).await.unwrap();
    c.find(Locator::Css("#token-input")).await.unwrap().send_keys(&stack.api_token).await.unwrap();
    click(c, "#token-save").await;

    // A build whose tests take a minute: cancelled from its page while they run.
    copy_tree(&repo_root().join("examples/flask-app"), &stack.dev.path);
    let pipeline = std::fs::read_to_string(stack.dev.path.join(".conveyor.yml")).unwrap();
    let test_line = pipeline.lines().find(|l| l.starts_with("test:")).unwrap().to_string();
    stack.dev.write(".conveyor.yml", &pipeline.replace(&test_line, "test: sleep 60"));
    let slow = stack.dev.commit_all("flask-app: slow tests");
    stack.dev.push();
    let id = wait_js(
        c,
        "the slow build on the builds page",
        Duration::from_secs(60),
        "const r = [...document.querySelectorAll('#builds-body tr')].find(r => r.textContent.includes(arguments[0])); return r ? r.dataset.buildId : null",
        vec![json!(&slow[..12])],
    )
    .await;
    let id = id.as_str().unwrap().to_string();
    c.goto(&format!("{}/#/builds/{id}", stack.console_url)).await.unwrap();
    wait_js(
        c,
        "the test step running",
        Duration::from_secs(120),
        "return !!document.querySelector('#build-steps tr[data-step=\"test\"] [data-state=\"running\"]')",
        vec![],
    )
    .await;
    click(c, "#cancel-build").await;
    wait_build_state(c, "cancelled", Duration::from_secs(60)).await;
    let build: Value = reqwest::get(format!("{}/builds/{id}", stack.ci_url)).await.unwrap().json().await.unwrap();
    assert_eq!(build["state"], "cancelled", "{build}");
    let reason = c.find(Locator::Css("#build-reason")).await.unwrap().text().await.unwrap();
    assert!(reason.contains("cancelled"), "{reason}");
    assert!(c.find(Locator::Css("#cancel-build")).await.is_err(), "no cancel button on an ended build");

    // The registry is down: the push fails, the page offers the retry, and it succeeds.
    stack.registry.stop();
    stack.dev.write(".conveyor.yml", &pipeline);
    let commit = stack.dev.commit_all("flask-app: tests back");
    stack.dev.push();
    let id = wait_js(
        c,
        "the next build listed",
        Duration::from_secs(60),
        "return fetch('/api/ci/builds').then(r => r.json()).then(bs => { const b = bs.find(b => b.commit === arguments[0]); return b ? String(b.id) : null })",
        vec![json!(commit)],
    )
    .await;
    let id = id.as_str().unwrap().to_string();
    c.goto(&format!("{}/#/builds/{id}", stack.console_url)).await.unwrap();
    wait_js(c, "the retry button", Duration::from_secs(300), "return !!document.getElementById('retry-build')", vec![]).await;
    let reason = c.find(Locator::Css("#build-reason")).await.unwrap().text().await.unwrap();
    assert!(reason.starts_with("push:"), "{reason}");
    stack.registry.restart().await;
    click(c, "#retry-build").await;
    wait_build_state(c, "succeeded", Duration::from_secs(120)).await;
    let build: Value = reqwest::get(format!("{}/builds/{id}", stack.ci_url)).await.unwrap().json().await.unwrap();
    let steps: Vec<&str> = build["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["checkout", "build", "test", "smoke", "push", "push", "publish"], "nothing rebuilt: {build}");
    assert!(stack.registry.manifest_digest(APP, &commit[..12]).await.is_some());
    browser.close().await;
}
