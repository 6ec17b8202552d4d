//! The live dashboard: one page that draws the topology (DNS, VIP, lbs, web, app, db
//! primary and replicas) and keeps itself current from a server-sent event stream of
//! [`View`]s. The page, its script and its styles are compiled into the binary
//! (`assets/`), so it works with no network beyond the node serving it.
//!
//! Paths, relative to where it is mounted (`/` on `hastack up`'s dashboard address,
//! `/dashboard/` on an lb's admin port), so the page's relative links work in both:
//! - `` or `index.html`: the page;
//! - `dashboard.js`, `dashboard.css`: its script and styles;
//! - `events`: `text/event-stream`, one `data:` line of [`View`] JSON per picture;
//! - `view.json`: the latest [`View`].
//!
//! One task per dashboard takes a picture every [`EVERY`] while someone watches (an
//! open event stream, or a `view.json` request in the last [`LINGER`]), feeds it to a
//! [`Tracker`] and publishes the view on a `watch` channel; each event stream is a
//! receiver of it, so a slow browser only ever misses intermediate pictures, it never
//! makes the publisher wait or buffer. Nobody watching, no picture is taken.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode, header};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::stack::{StackStatus, Tracker};

/// How often the dashboard takes a picture of the stack.
pub const EVERY: Duration = Duration::from_secs(1);

/// The response body of the dashboard's paths.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// How long a `view.json` request keeps pictures coming with no event stream open.
pub const LINGER: Duration = Duration::from_secs(10);

/// The views published so far (`None` before the first picture), as JSON.
type Published = watch::Receiver<Option<Arc<str>>>;

/// Who wants pictures: the open event streams, and the last `view.json` request. With
/// neither, the publisher takes none (an lb does not poll the whole stack every second
/// for nobody).
#[derive(Debug, Default)]
struct Demand {
    streams: AtomicUsize,
    asked: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Demand {
    fn wanted(&self, now: Instant) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
            || self
                .asked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| now.saturating_duration_since(t) < LINGER)
    }

    fn ask(&self) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.wake.notify_one();
    }
}

/// One open event stream, counted in its dashboard's [`Demand`] while it lives.
struct Watching(Arc<Demand>);

impl Watching {
    fn new(demand: Arc<Demand>) -> Watching {
        demand.streams.fetch_add(1, Ordering::Relaxed);
        demand.wake.notify_one();
        Watching(demand)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A dashboard: its published views and the paths that serve them.
#[derive(Clone)]
pub struct Dashboard {
    views: Published,
    demand: Arc<Demand>,
}

impl Dashboard {
    /// Takes a picture with `take` every [`EVERY`] while someone watches (an event
    /// stream is open, or `view.json` was asked within [`LINGER`]), until `shutdown`.
    pub fn spawn<F, Fut>(mut take: F, mut shutdown: watch::Receiver<bool>) -> Dashboard
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = StackStatus> + Send,
    {
        let (tx, views) = watch::channel(None);
        let demand = Arc::new(Demand::default());
        let wanted = demand.clone();
        tokio::spawn(async move {
            let mut tracker = Tracker::new();
            loop {
                while !wanted.wanted(Instant::now()) {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = wanted.wake.notified() => {}
                    }
                }
                let view = tracker.observe(take().await);
                match serde_json::to_string(&view) {
                    Ok(json) => {
                        tx.send_replace(Some(json.into()));
                    }
                    Err(e) => tracing::warn!("dashboard view not encoded: {e}"),
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
        });
        Dashboard { views, demand }
    }

    /// A dashboard over views published elsewhere (tests).
    pub fn over(views: watch::Receiver<Option<Arc<str>>>) -> Dashboard {
        Dashboard {
            views,
            demand: Arc::default(),
        }
    }

    /// Answers `path` (relative to the mount point), or `None` when it is not the
    /// dashboard's.
    pub fn handle(&self, path: &str) -> Option<Response<Body>> {
        Some(match path {
            "" | "index.html" => asset("text/html; charset=utf-8", INDEX),
            "dashboard.js" => asset("text/javascript; charset=utf-8", SCRIPT),
            "dashboard.css" => asset("text/css; charset=utf-8", STYLE),
            "view.json" => {
                self.demand.ask();
                match self.views.borrow().clone() {
                    Some(json) => respond(
                        StatusCode::OK,
                        "application/json",
                        Full::new(Bytes::from(json.as_bytes().to_vec())).boxed_unsync(),
                    ),
                    None => respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        Full::new(Bytes::from_static(b"{\"error\":\"no picture yet\"}"))
                            .boxed_unsync(),
                    ),
                }
            }
            "events" => respond(
                StatusCode::OK,
                "text/event-stream",
                StreamBody::new(events(
                    self.views.clone(),
                    Watching::new(self.demand.clone()),
                ))
                .boxed_unsync(),
            ),
            _ => return None,
        })
    }
}

/// The event stream of `views`: the current view at once, then each new one; the
/// publisher takes pictures while `watching` lives (as long as the stream).
fn events(
    views: Published,
    watching: Watching,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    futures_util::stream::unfold(
        (views, true, watching),
        |(mut views, first, watching)| async move {
            if !first && views.changed().await.is_err() {
                return None;
            }
            let json = loop {
                if let Some(json) = views.borrow_and_update().clone() {
                    break json;
                }
                if views.changed().await.is_err() {
                    return None;
                }
            };
            Some((
                Ok(Frame::data(sse_message(&json))),
                (views, false, watching),
            ))
        },
    )
}

/// One server-sent event carrying `json` (one line: JSON has no raw newlines).
fn sse_message(json: &str) -> Bytes {
    let mut b = String::with_capacity(json.len() + 8);
    b.push_str("data: ");
    b.push_str(json);
    b.push_str("\n\n");
    Bytes::from(b)
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    respond(
        StatusCode::OK,
        content_type,
        Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync(),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // Everything is served from here: no script, style or picture from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn an_event_is_one_data_line_and_a_blank_line() {
        assert_eq!(&sse_message("{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
    }

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX),
            ("dashboard.js", SCRIPT),
            ("dashboard.css", STYLE),
        ] {
            for remote in ["http://", "https://", "//cdn", "@import"] {
                assert!(
                    !text.contains(remote),
                    "{name} refers to something outside the dashboard: {remote}"
                );
            }
        }
        assert!(INDEX.contains("dashboard.js") && INDEX.contains("dashboard.css"));
    }

    #[tokio::test]
    async fn the_stream_sends_the_current_view_then_each_new_one() {
        let (tx, rx) = watch::channel(Some(Arc::<str>::from("{\"n\":1}")));
        let mut s = Box::pin(events(rx, Watching::new(Arc::default())));
        let first = s
            .next()
            .await
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        assert_eq!(first.as_deref(), Some(&b"data: {\"n\":1}\n\n"[..]));
        tx.send_replace(Some("{\"n\":2}".into()));
        let second = s
            .next()
            .await
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        assert_eq!(second.as_deref(), Some(&b"data: {\"n\":2}\n\n"[..]));
        drop(tx);
        assert!(
            s.next().await.is_none(),
            "the stream ends with its publisher"
        );
    }

    fn picture(at_unix_ms: i64) -> StackStatus {
        StackStatus {
            site: "www.foobar.com".into(),
            mode: "loopback".into(),
            at_unix_ms,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pictures_are_taken_only_while_someone_watches() {
        use http_body_util::BodyExt;
        let taken = Arc::new(AtomicUsize::new(0));
        let (_stop, shutdown) = watch::channel(false);
        let d = {
            let taken = taken.clone();
            Dashboard::spawn(
                move || {
                    let n = taken.fetch_add(1, Ordering::Relaxed);
                    async move { picture(n as i64) }
                },
                shutdown,
            )
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(taken.load(Ordering::Relaxed), 0, "nobody watched");

        let mut body = d.handle("events").expect("events").into_body();
        let first = body
            .frame()
            .await
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        assert!(first.is_some_and(|b| b.starts_with(b"data: {")));
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let while_watched = taken.load(Ordering::Relaxed);
        assert!(
            while_watched >= 3,
            "one picture a second while watched: {while_watched}"
        );

        drop(body);
        tokio::time::sleep(EVERY * 2).await;
        let after = taken.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(taken.load(Ordering::Relaxed), after, "the stream closed");

        // A view.json request keeps pictures coming for LINGER, then they stop.
        assert!(d.handle("view.json").is_some());
        tokio::time::sleep(EVERY * 3).await;
        assert!(taken.load(Ordering::Relaxed) > after);
        tokio::time::sleep(LINGER * 2).await;
        let lingered = taken.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(taken.load(Ordering::Relaxed), lingered);
    }

    #[test]
    fn unknown_paths_are_not_the_dashboards() {
        let (_tx, rx) = watch::channel(None);
        let d = Dashboard::over(rx);
        assert!(d.handle("secret").is_none());
        assert_eq!(
            d.handle("view.json").map(|r| r.status()),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(d.handle("").map(|r| r.status()), Some(StatusCode::OK));
    }
}
