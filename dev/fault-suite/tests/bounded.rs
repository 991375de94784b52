//! The fault-injection suite in its bounded form, as CI runs it: every scenario of `dev/faults`
//! with smaller bursts, against the real binaries. Each must have injected its faults and end
//! with every app at its newest build, nothing lost, nothing duplicated and no crash.

use conveyor_fault_suite::{run, table, Scale, SCENARIOS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_scenario_loses_nothing_duplicates_nothing_and_crashes_nothing() {
    let seed = std::env::var("CONVEYOR_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261123);
    let rows = run(&Scale::bounded(), seed, &[]).await;
    let text = table(&rows);
    println!("seed {seed}\n{text}");
    assert_eq!(rows.len(), SCENARIOS.len());
    for r in &rows {
        assert!(r.injected > 0, "{}: no fault was injected\n{text}", r.scenario);
        assert!(r.expected > 0 && r.found == r.expected, "{}: manifest updates expected vs found\n{text}", r.scenario);
        assert_eq!((r.duplicates, r.losses, r.crashes, r.not_refused), (0, 0, 0, 0), "{}\n{text}", r.scenario);
    }
}
