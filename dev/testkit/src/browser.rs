//! A headless Chromium driven over WebDriver: Debian's `chromium-driver` (chromedriver) started
//! on a free loopback port, and a `fantoccini` client that opened a browser session through it.
//! The browser, the driver and the browser's profile dir are gone on drop.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder};

use crate::{free_port, wait_until, ChildGuard};

pub struct TestBrowser {
    pub client: Client,
    _profile: tempfile::TempDir,
    _driver: ChildGuard,
}

impl TestBrowser {
    /// A browser window of `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> TestBrowser {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(std::path::Path::new(bin).exists(), "{bin} not found: run dev/setup (Debian's chromium and chromium-driver)");
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = ChildGuard(driver);
        let url = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver answers", Duration::from_secs(20), || {
            let status = format!("{url}/status");
            async move { reqwest::get(&status).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("open a headless Chromium session through chromedriver");
        TestBrowser { client, _profile: profile, _driver: driver }
    }

    /// Ends the browser session (chromium exits).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Saves a PNG of what the window shows.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("take a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for TestBrowser {
    /// Whatever the test did (a panic skips [`TestBrowser::close`]), no browser outlives it.
    fn drop(&mut self) {
        let marker = format!("--user-data-dir={}", self._profile.path().display());
        let _ = Command::new("pkill").args(["-KILL", "-f", &marker]).status();
    }
}
