//! A real browser for the UI tests: Debian's headless Chromium driven through
//! `chromedriver` (WebDriver), one driver process per browser, stopped when dropped.
//! Screenshots go to `target/test-output/ui/`, which CI keeps.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::plane::Process;
use crate::{free_port, workspace};

/// Where screenshots are saved.
pub fn output_dir() -> PathBuf {
    let dir = std::env::var_os("BERTH_TEST_OUTPUT")
        .map_or_else(|| workspace().join("target/test-output"), PathBuf::from)
        .join("ui");
    std::fs::create_dir_all(&dir).expect("the test output directory can be made");
    dir
}

/// A headless Chromium at a phone's or a desktop's width.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    profile: tempfile::TempDir,
    _driver: Process,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver: stop it by its own profile directory.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.profile.path())
            .status();
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium `width` pixels wide.
    pub async fn start(width: u32) -> Self {
        let driver =
            std::env::var("BERTH_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{driver} does not start ({e}): install Debian's chromium and chromium-driver (.ci/run does)")
            });
        let driver = Process(child);
        let mut capabilities = serde_json::Map::new();
        let profile = tempfile::tempdir().expect("tempdir");
        let mut chrome = serde_json::json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--window-size={width},1000"),
                format!("--user-data-dir={}", profile.path().display()),
            ]
        });
        if let Ok(binary) = std::env::var("BERTH_CHROMIUM") {
            chrome["binary"] = binary.into();
        }
        capabilities.insert("goog:chromeOptions".to_owned(), chrome);
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Self {
                        client,
                        profile,
                        _driver: driver,
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver never started a browser: {last:?}");
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page opens");
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("a url")
            .path()
            .to_owned()
    }

    /// Waits up to five seconds for the page at `path` (a click's navigation may still
    /// be under way); panics with the page shown instead.
    pub async fn wait_path(&self, path: &str) {
        for _ in 0..50 {
            if self.path().await == path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let source = self.client.source().await.unwrap_or_default();
        panic!("expected {path}, still on {}:\n{source}", self.path().await)
    }

    /// The element `css` selects; panics with the page when there is none.
    /// Waits up to five seconds for it, as the page may still be loading after a click.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let mut last = None;
        for _ in 0..50 {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let source = self.client.source().await.unwrap_or_default();
        panic!("no {css} on {}: {last:?}\n{source}", self.path().await)
    }

    /// How many elements `css` selects.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |all| all.len())
    }

    /// The text of the element `css` selects (found again if a live update replaced it).
    pub async fn text(&self, css: &str) -> String {
        let mut last = None;
        for _ in 0..10 {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(e) => last = Some(e),
            }
        }
        panic!("the text of {css} cannot be read: {last:?}")
    }

    /// Waits up to five seconds for the element `css` selects to say `needle` (after a
    /// click, the next page or a live update); its text, which the caller asserts on.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let mut text = String::new();
        for _ in 0..50 {
            text = self.text(css).await;
            if text.contains(needle) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        text
    }

    /// Waits up to five seconds for attribute `name` of what `css` selects to be
    /// `value`; what it is then, which the caller asserts on.
    pub async fn wait_attr(&self, css: &str, name: &str, value: &str) -> Option<String> {
        let mut now = None;
        for _ in 0..50 {
            now = self.attr(css, name).await;
            if now.as_deref() == Some(value) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        now
    }

    /// An attribute of the element `css` selects (found again if a live update
    /// replaced it).
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let mut last = None;
        for _ in 0..10 {
            match self.find(css).await.attr(name).await {
                Ok(value) => return value,
                Err(e) => last = Some(e),
            }
        }
        panic!("{name} of {css} cannot be read: {last:?}")
    }

    /// Types `text` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("keys are typed");
    }

    /// Pastes `text` into the field `css` selects, as a clipboard paste would.
    pub async fn paste(&self, css: &str, text: &str) {
        self.find(css).await;
        self.client
            .execute(
                "document.querySelector(arguments[0]).value = arguments[1];",
                vec![css.into(), text.into()],
            )
            .await
            .expect("the text is pasted");
    }

    /// Clicks what `css` selects.
    pub async fn click(&self, css: &str) {
        let mut last = None;
        for _ in 0..10 {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
        }
        panic!("{css} cannot be clicked: {last:?}")
    }

    /// Waits up to `seconds` for `css` to select at least `n` elements, without
    /// reloading: the page must update itself.
    pub async fn wait_for(&self, css: &str, n: usize, seconds: u64) -> bool {
        for _ in 0..seconds * 5 {
            if self.count(css).await >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Signs in through the login form.
    pub async fn sign_in(&self, base: &str, tenant: &str, user: &str, password: &str) {
        self.goto(&format!("{base}/ui")).await;
        assert_eq!(
            self.path().await,
            "/ui/login",
            "an anonymous visitor is sent to sign in"
        );
        self.fill("#tenant", tenant).await;
        self.fill("#user", user).await;
        self.fill("#password", password).await;
        self.click("#sign-in").await;
        // Wait for the signed-in page, so that a navigation that follows cannot race
        // the login's own redirect.
        for _ in 0..100 {
            if self.path().await != "/ui/login" && self.count("header form button").await > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let source = self.client.source().await.unwrap_or_default();
        panic!("signing in as {tenant}/{user} did not leave the login page:\n{source}")
    }

    /// Signs out.
    pub async fn sign_out(&self) {
        self.click("header form button").await;
    }

    /// Saves a screenshot as `name`.png in [`output_dir`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(output_dir().join(format!("{name}.png")), png)
            .expect("the screenshot is saved");
    }

    /// The session cookie the UI set, for trying URLs without the browser.
    pub async fn session_cookie(&self) -> String {
        self.client
            .get_named_cookie("berth_session")
            .await
            .expect("signed in")
            .value()
            .to_owned()
    }
}
