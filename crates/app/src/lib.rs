//! The reference application of www.foobar.com: a page listing posts with a form to
//! add one, and the JSON API users and tests rely on.
//!
//! - `GET /` — the page; `POST /posts` — the form (303 back to `/`).
//! - `POST /api/posts` `{"author","body"}` → 201 with the stored post and a `Location`.
//!   With an `Idempotency-Key` header (1–128 visible ASCII characters), a repeated
//!   request returns the post stored the first time (200, same id) and never stores a
//!   second one; the same key with another author or body is 422.
//! - `GET /api/posts[?limit=N]` → newest first; `GET /api/posts/{id}` → one or 404.
//! - Bad input → 400 with `{"error": "..."}`. No writable primary (a failover under
//!   way), or no node able to answer a read → 503 with `Retry-After: 1`.
//! - `GET /healthz` → 200 while the app can read (even with no primary), with
//!   `can_read`, `can_write`, `primary`, each replica's state and `db_tls` (the TLS
//!   cipher of the app's sessions with the db nodes, `null` when plain); 503 when it
//!   cannot.
//!
//! Every response carries `X-Served-By: <node>`, which the web and lb tiers extend.
//! Where the data lives and how the app follows the primary: [`store`] and [`cluster`].

pub mod cluster;
pub mod idempotency;
pub mod metrics;
pub mod page;
pub mod store;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use hastack_config::{Role, Topology};
use hastack_runtime::{Admin, BindError, HealthReport, bind_tcp};
use hastack_status::health::Health;
use hastack_tls::pki::PkiError;

pub use idempotency::IdempotencyKey;
pub use metrics::AppMetrics;
pub use store::{
    ClientTls, Created, Limits, MariaDbAccount, MariaDbTarget, Post, Store, StoreError,
};

/// Longest author name, in characters.
pub const MAX_AUTHOR: usize = 64;
/// Longest post body, in characters.
pub const MAX_BODY: usize = 2000;

/// Where the app keeps its data.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// The topology's MariaDB tier, with the stack's database passwords.
    MariaDb(hastack_runtime::secrets::DbSecrets),
    /// An embedded SQLite file (when `mariadbd` is not installed).
    Sqlite(PathBuf),
}

/// Why an app node could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The name is not an app node of the topology.
    #[error("`{0}` is not an app node of this topology")]
    NotAnApp(String),
    /// A socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The database could not be opened or migrated in time.
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    /// The primary did not answer before the deadline.
    #[error("the database did not accept the schema within {0:?}: {1}")]
    PrimaryUnavailable(Duration, String),
    /// The certificates cannot be used.
    #[error(transparent)]
    Tls(#[from] hastack_tls::TlsError),
    /// The node's certificate of the internal CA could not be read or issued.
    #[error("internal CA: {0}")]
    Pki(#[from] PkiError),
}

#[derive(Clone)]
struct AppState {
    store: Store,
    node: Arc<str>,
}

/// A post as the API accepts it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPost {
    /// Who writes.
    pub author: String,
    /// What they write.
    pub body: String,
}

impl NewPost {
    /// Trims and checks the fields; the error says what is wrong.
    pub fn validate(self) -> Result<NewPost, String> {
        let author = self.author.trim().to_string();
        let body = self.body.trim().to_string();
        if author.is_empty() {
            return Err("author must not be empty".into());
        }
        if author.chars().count() > MAX_AUTHOR {
            return Err(format!("author is longer than {MAX_AUTHOR} characters"));
        }
        if body.is_empty() {
            return Err("body must not be empty".into());
        }
        if body.chars().count() > MAX_BODY {
            return Err(format!("body is longer than {MAX_BODY} characters"));
        }
        if author.chars().any(char::is_control) {
            return Err("author must not contain control characters".into());
        }
        Ok(NewPost { author, body })
    }
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// 503 with `Retry-After: 1`: the database tier is failing over or briefly unreachable.
fn retry_later(msg: String) -> Response {
    let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::NoPrimary(_) | StoreError::Unavailable(_) => retry_later(e.to_string()),
        StoreError::KeyReused => json_error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        // The client decides: a retry without a key may store the post twice.
        StoreError::OutcomeUnknown(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => {
            warn!(error = %e, "database error");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {e}"),
            )
        }
    }
}

fn created_response(created: Created) -> Response {
    let (status, post) = match created {
        Created::New(p) => (StatusCode::CREATED, p),
        Created::Replayed(p) => (StatusCode::OK, p),
    };
    (
        status,
        [(header::LOCATION, format!("/api/posts/{}", post.id))],
        Json(post),
    )
        .into_response()
}

async fn create_post(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match IdempotencyKey::from_headers(&headers) {
        Ok(k) => k,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let new: NewPost = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e}; expected {{\"author\": \"…\", \"body\": \"…\"}}"),
            );
        }
    };
    let new = match new.validate() {
        Ok(p) => p,
        Err(msg) => return json_error(StatusCode::BAD_REQUEST, msg),
    };
    match st.store.create(&new.author, &new.body, key.as_ref()).await {
        Ok(created) => created_response(created),
        Err(e) => store_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<String>,
}

fn parse_limit(q: &ListQuery) -> Result<i64, String> {
    match &q.limit {
        None => Ok(50),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=200).contains(&n) => Ok(n),
            _ => Err(format!("limit must be a number from 1 to 200, got {s:?}")),
        },
    }
}

async fn list_posts(State(st): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let limit = match parse_limit(&q) {
        Ok(l) => l,
        Err(msg) => return json_error(StatusCode::BAD_REQUEST, msg),
    };
    match st.store.list(limit).await {
        Ok(posts) => Json(posts).into_response(),
        Err(e) => store_error(&e),
    }
}

async fn get_post(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("post id must be a number, got {id:?}"),
        );
    };
    match st.store.get(id).await {
        Ok(Some(post)) => Json(post).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no post with id {id}")),
        Err(e) => store_error(&e),
    }
}

async fn front_page(State(st): State<AppState>) -> Response {
    match st.store.list(50).await {
        Ok(posts) => Html(page::render(&posts, None)).into_response(),
        Err(e) => {
            warn!(error = %e, "database error");
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(page::render(
                    &[],
                    Some("The database is unavailable; try again in a moment."),
                )),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

async fn form_post(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Result<NewPost, _> = serde_urlencoded::from_bytes(&body);
    let checked = IdempotencyKey::from_headers(&headers)
        .map_err(|e| e.to_string())
        .and_then(|key| {
            parsed
                .map_err(|e| e.to_string())
                .and_then(NewPost::validate)
                .map(|new| (new, key))
        });
    let (new, key) = match checked {
        Ok(p) => p,
        Err(msg) => {
            let posts = st.store.list(50).await.unwrap_or_default();
            return (
                StatusCode::BAD_REQUEST,
                Html(page::render(&posts, Some(&msg))),
            )
                .into_response();
        }
    };
    match st.store.create(&new.author, &new.body, key.as_ref()).await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => store_error(&e),
    }
}

async fn healthz(State(st): State<AppState>) -> Response {
    let report = health_report(&st.store, &st.node).await;
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.body)).into_response()
}

/// The app's health: healthy while it can read, whatever the primary.
async fn health_report(store: &Store, node: &str) -> HealthReport {
    let h = store.health().await;
    HealthReport {
        healthy: h.can_read,
        body: Health::App(h.app_health(node, store.engine(), store.metrics().traffic.get())),
    }
}

/// The application's routes over `store`, answering as node `node`.
pub fn router(store: Store, node: &str) -> Router {
    let state = AppState {
        store,
        node: node.into(),
    };
    let served_by = HeaderValue::from_str(node).unwrap_or_else(|_| HeaderValue::from_static("app"));
    let traffic = state.store.metrics().traffic.clone();
    Router::new()
        .route("/", get(front_page))
        .route("/posts", axum::routing::post(form_post))
        .route("/api/posts", get(list_posts).post(create_post))
        .route("/api/posts/{id}", get(get_post))
        .route("/healthz", get(healthz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let served_by = served_by.clone();
                let traffic = traffic.clone();
                // The tiers' health checks are not the site's traffic.
                let health_check = req.uri().path() == "/healthz";
                async move {
                    let mut resp = next.run(req).await;
                    if !health_check {
                        traffic.count(resp.status().as_u16());
                    }
                    resp.headers_mut().insert("x-served-by", served_by);
                    resp
                }
            },
        ))
}

/// The store of `data` for the topology's db tier: every db node, the app's account.
async fn open_store(
    topo: &Topology,
    data: &DataSource,
    tls: Option<&ClientTls>,
    metrics: &AppMetrics,
) -> Result<Store, StoreError> {
    let limits = Limits::from_settings(&topo.db);
    match data {
        DataSource::Sqlite(path) => Store::sqlite(path, limits, metrics.clone()).await,
        DataSource::MariaDb(secrets) => {
            let targets: Vec<MariaDbTarget> = topo
                .tier(Role::Db)
                .map(|n| MariaDbTarget {
                    name: n.name.clone(),
                    host: n.address.to_string(),
                    port: topo.ports.db,
                })
                .collect();
            let account = MariaDbAccount {
                database: topo.db.database.clone(),
                user: topo.db.user.clone(),
                password: secrets.app.clone(),
                tls: tls.cloned(),
            };
            Ok(Store::mariadb(&targets, &account, limits, metrics.clone()))
        }
    }
}

/// Runs app node `name` until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    data: DataSource,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::App)
        .ok_or_else(|| AppError::NotAnApp(name.to_string()))?;
    let service_addr = SocketAddr::from((node.address, topo.ports.app));
    let listener = bind_tcp(service_addr, "http", false)?;
    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;

    let db_tls = match data {
        DataSource::MariaDb(_) if topo.tls.internal => Some(hastack_tls::pki::node_files(
            &topo.state_dir,
            &node.name,
            IpAddr::V4(node.address),
        )?),
        _ => None,
    };
    let metrics = AppMetrics::default();
    let deadline = Duration::from_secs(60);
    let started = Instant::now();
    // The db tier may still be starting (every db node starts read-only until one is
    // made primary), and app nodes sharing an SQLite file may race to create it: retry
    // opening and migrating until a deadline. The monitor runs meanwhile, so the
    // migration goes to whichever node is primary.
    let mut store = None;
    let mut monitor = None;
    let store = loop {
        let attempt = async {
            let opened = match &store {
                Some(s) => s,
                None => store.insert(open_store(topo, &data, db_tls.as_ref(), &metrics).await?),
            };
            if monitor.is_none() {
                monitor = opened.spawn_monitor(shutdown.clone());
            }
            opened.migrate().await
        };
        match attempt.await {
            Ok(()) => match store {
                Some(s) => break s,
                None => continue,
            },
            Err(e) if started.elapsed() < deadline => {
                info!(error = %e, "waiting for the database to accept the schema");
                tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Err(e) => return Err(AppError::PrimaryUnavailable(deadline, e.to_string())),
        }
    };

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let acceptor =
        hastack_tls::NodeTls::internal_acceptor_of(topo, node, &mut registry, shutdown.clone())?;
    let probe = {
        let store = store.clone();
        let name = name.to_string();
        Arc::new(move || {
            let store = store.clone();
            let name = name.clone();
            Box::pin(async move { health_report(&store, &name).await }) as _
        })
    };
    let admin = Admin::new(probe, registry);
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));

    let app = router(store, name);
    info!(node = name, addr = %service_addr, tls = acceptor.is_some(), "app ready");
    // The same serving loop as the other tiers (TLS with client certificates when
    // internal TLS is on), with the axum router as the handler.
    hastack_runtime::serve(
        listener,
        acceptor,
        move |req: hyper::Request<hyper::body::Incoming>, _peer| {
            let mut app = app.clone();
            async move {
                match tower::Service::call(&mut app, req.map(axum::body::Body::new)).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        },
        shutdown,
    )
    .await;
    let _ = admin_task.await;
    if let Some(monitor) = monitor {
        let _ = monitor.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_trims_and_rejects() {
        let post = |author: &str, body: &str| {
            NewPost {
                author: author.into(),
                body: body.into(),
            }
            .validate()
        };
        let ok = post(" ann ", " hi ").expect("valid");
        assert_eq!((ok.author.as_str(), ok.body.as_str()), ("ann", "hi"));
        for (author, body) in [
            ("", "x"),
            ("a", "   "),
            (&"a".repeat(65), "x"),
            ("a", &"x".repeat(2001)),
            ("a\u{7}", "x"),
        ] {
            assert!(
                post(author, body).is_err(),
                "{author:?} / {body:?} accepted"
            );
        }
    }

    #[test]
    fn limit_is_bounded() {
        assert_eq!(parse_limit(&ListQuery { limit: None }), Ok(50));
        assert_eq!(
            parse_limit(&ListQuery {
                limit: Some("3".into())
            }),
            Ok(3)
        );
        assert!(
            parse_limit(&ListQuery {
                limit: Some("0".into())
            })
            .is_err()
        );
        assert!(
            parse_limit(&ListQuery {
                limit: Some("201".into())
            })
            .is_err()
        );
        assert!(
            parse_limit(&ListQuery {
                limit: Some("x".into())
            })
            .is_err()
        );
    }

    mod http {
        //! The routes through the axum router, over an SQLite store or a MariaDB store
        //! with no db node reachable.

        use super::super::*;
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;

        const LIMITS: Limits = Limits {
            query_timeout: Duration::from_secs(5),
            max_replica_lag: Duration::from_secs(5),
            failover_wait: Duration::from_millis(300),
        };

        struct Answer {
            status: StatusCode,
            headers: HeaderMap,
            json: serde_json::Value,
        }

        async fn call(app: &Router, req: Request<Body>) -> Answer {
            let resp = app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            Answer {
                status,
                headers,
                json,
            }
        }

        fn post_json(key: Option<&str>, author: &str, body: &str) -> Request<Body> {
            let mut req = Request::post("/api/posts").header("content-type", "application/json");
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let doc = serde_json::json!({ "author": author, "body": body });
            req.body(Body::from(doc.to_string())).expect("request")
        }

        fn get(path: &str) -> Request<Body> {
            Request::get(path).body(Body::empty()).expect("request")
        }

        async fn sqlite_app(dir: &tempfile::TempDir) -> (Router, Store) {
            let store = Store::sqlite(
                &dir.path().join("app.sqlite"),
                LIMITS,
                AppMetrics::default(),
            )
            .await
            .expect("open");
            store.migrate().await.expect("migrate");
            (router(store.clone(), "app7"), store)
        }

        async fn stored_rows(app: &Router) -> usize {
            let list = call(app, get("/api/posts?limit=200")).await;
            assert_eq!(list.status, StatusCode::OK);
            list.json.as_array().map(Vec::len).unwrap_or_default()
        }

        #[tokio::test]
        async fn idempotent_replay_returns_the_same_post_once() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (app, store) = sqlite_app(&dir).await;
            let first = call(&app, post_json(Some("key-1"), " ann ", "hello")).await;
            assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
            let id = first.json["id"].as_i64().expect("id");
            assert_eq!(
                first.headers.get("location").and_then(|v| v.to_str().ok()),
                Some(format!("/api/posts/{id}").as_str())
            );
            assert_eq!(
                first
                    .headers
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok()),
                Some("app7")
            );
            // The retry (trimmed to the same post) replays it.
            let again = call(&app, post_json(Some("key-1"), "ann", "hello ")).await;
            assert_eq!(again.status, StatusCode::OK, "{}", again.json);
            assert_eq!(again.json, first.json, "the original post, same id");
            assert_eq!(stored_rows(&app).await, 1);
            assert_eq!(store.metrics().idempotent_replays.get(), 1);
            assert_eq!(store.metrics().posts_created.get(), 1);

            // Without a key, every request stores.
            let a = call(&app, post_json(None, "ann", "hello")).await;
            assert_eq!(a.status, StatusCode::CREATED);
            assert_ne!(a.json["id"], first.json["id"]);
            assert_eq!(stored_rows(&app).await, 2);

            // The replayed post reads back by id.
            let one = call(&app, get(&format!("/api/posts/{id}"))).await;
            assert_eq!(one.status, StatusCode::OK);
            assert_eq!(one.json, first.json);
        }

        #[tokio::test]
        async fn a_key_reused_for_another_post_is_422() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (app, _) = sqlite_app(&dir).await;
            let first = call(&app, post_json(Some("k"), "ann", "one")).await;
            assert_eq!(first.status, StatusCode::CREATED);
            for (author, body) in [("ann", "two"), ("bob", "one")] {
                let other = call(&app, post_json(Some("k"), author, body)).await;
                assert_eq!(
                    other.status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{}",
                    other.json
                );
                assert!(
                    other.json["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("Idempotency-Key")),
                    "{}",
                    other.json
                );
            }
            assert_eq!(stored_rows(&app).await, 1);
        }

        #[tokio::test]
        async fn a_bad_key_is_400_and_stores_nothing() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (app, _) = sqlite_app(&dir).await;
            let long = "k".repeat(129);
            for key in ["has space", "", long.as_str(), "caf\u{e9}"] {
                let req = Request::post("/api/posts")
                    .header(
                        "idempotency-key",
                        HeaderValue::from_bytes(key.as_bytes()).expect("value"),
                    )
                    .body(Body::from(r#"{"author":"ann","body":"x"}"#))
                    .expect("request");
                let a = call(&app, req).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{key:?}");
                assert!(a.json["error"].is_string(), "{key:?}: {}", a.json);
            }
            let max = "k".repeat(128);
            let ok = call(&app, post_json(Some(&max), "ann", "x")).await;
            assert_eq!(ok.status, StatusCode::CREATED, "128 characters are allowed");
            assert_eq!(stored_rows(&app).await, 1);
        }

        #[tokio::test]
        async fn the_form_accepts_a_key_too() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (app, _) = sqlite_app(&dir).await;
            for _ in 0..2 {
                let req = Request::post("/posts")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("idempotency-key", "form-1")
                    .body(Body::from("author=ann&body=from+the+form"))
                    .expect("request");
                let a = call(&app, req).await;
                assert_eq!(a.status, StatusCode::SEE_OTHER);
            }
            assert_eq!(stored_rows(&app).await, 1);
            let bad = Request::post("/posts")
                .header("idempotency-key", "no spaces")
                .body(Body::from("author=ann&body=x"))
                .expect("request");
            assert_eq!(call(&app, bad).await.status, StatusCode::BAD_REQUEST);
            assert_eq!(stored_rows(&app).await, 1);
        }

        #[tokio::test]
        async fn sqlite_health_can_read_and_write() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (app, _) = sqlite_app(&dir).await;
            let h = call(&app, get("/healthz")).await;
            assert_eq!(h.status, StatusCode::OK);
            assert_eq!(h.json["role"], "app");
            assert_eq!(h.json["db"], "sqlite");
            assert_eq!(h.json["can_read"], true);
            assert_eq!(h.json["can_write"], true);
            assert_eq!(h.json["replicas"], serde_json::json!([]));
        }

        /// Ports on 127.0.0.1 where nothing listens (bound, then let go).
        fn dead_ports(n: usize) -> Vec<u16> {
            let listeners: Vec<std::net::TcpListener> = (0..n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
                .collect();
            listeners
                .iter()
                .map(|l| l.local_addr().expect("addr").port())
                .collect()
        }

        #[tokio::test]
        async fn with_no_primary_writes_are_503_with_retry_after() {
            let targets: Vec<MariaDbTarget> = dead_ports(3)
                .into_iter()
                .enumerate()
                .map(|(i, port)| MariaDbTarget {
                    name: format!("db{}", i + 1),
                    host: "127.0.0.1".into(),
                    port,
                })
                .collect();
            let account = MariaDbAccount {
                database: "foobar".into(),
                user: "app".into(),
                password: "secret".into(),
                tls: None,
            };
            let store = Store::mariadb(&targets, &account, LIMITS, AppMetrics::default());
            let (stop, shutdown) = watch::channel(false);
            let monitor = store
                .spawn_monitor(shutdown)
                .expect("a MariaDB store has a monitor");
            // Wait (with a deadline, not a sleep) for the monitor's first verdict.
            let mut view = store.view().expect("view");
            tokio::time::timeout(Duration::from_secs(10), view.wait_for(|v| v.round >= 1))
                .await
                .expect("the monitor probes within the deadline")
                .expect("monitor alive");
            let app = router(store.clone(), "app1");

            let w = call(&app, post_json(None, "ann", "hello")).await;
            assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE, "{}", w.json);
            assert_eq!(
                w.headers.get("retry-after").and_then(|v| v.to_str().ok()),
                Some("1")
            );
            let msg = w.json["error"].as_str().expect("a JSON error").to_string();
            assert!(
                msg.contains("no writable primary") && msg.contains("retry"),
                "{msg}"
            );
            assert_eq!(
                w.headers.get("x-served-by").and_then(|v| v.to_str().ok()),
                Some("app1")
            );

            let keyed = call(&app, post_json(Some("k"), "ann", "hello")).await;
            assert_eq!(keyed.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(keyed.headers.contains_key("retry-after"));

            let form = Request::post("/posts")
                .body(Body::from("author=ann&body=hi"))
                .expect("request");
            let f = call(&app, form).await;
            assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(f.headers.contains_key("retry-after"));
            assert!(
                f.json["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no writable primary"))
            );
            assert_eq!(store.metrics().writes_refused_no_primary.get(), 3);

            // Nothing can read either: reads are 503 with Retry-After, and so is health.
            let r = call(&app, get("/api/posts")).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(r.headers.contains_key("retry-after"));
            let one = call(&app, get("/api/posts/1")).await;
            assert_eq!(
                one.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "not a false 404"
            );
            let h = call(&app, get("/healthz")).await;
            assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(h.json["db"], "mariadb");
            assert_eq!(h.json["can_read"], false);
            assert_eq!(h.json["can_write"], false);
            assert_eq!(h.json["primary"], serde_json::Value::Null);
            let replicas = h.json["replicas"].as_array().expect("replicas");
            assert_eq!(replicas.len(), 3);
            for r in replicas {
                assert!(
                    r["status"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("unreachable")),
                    "{r}"
                );
                assert_eq!(r["lag_s"], serde_json::Value::Null);
            }
            stop.send_replace(true);
            tokio::time::timeout(Duration::from_secs(10), monitor)
                .await
                .expect("the monitor stops with shutdown")
                .expect("monitor task");
        }
    }
}
