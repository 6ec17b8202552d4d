//! The reference application of www.foobar.com: a page listing posts with a form to
//! add one, and the JSON API users and tests rely on.
//!
//! - `GET /` — the page; `POST /posts` — the form (303 back to `/`).
//! - `POST /api/posts` `{"author","body"}` → 201 with the stored post.
//! - `GET /api/posts[?limit=N]` → newest first; `GET /api/posts/{id}` → one or 404.
//! - Bad input → 400 with `{"error": "..."}`; a database failure → 503 likewise.
//!
//! Every response carries `X-Served-By: <node>`, which the web and lb tiers extend.

pub mod page;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use hastack_config::{Role, Topology};
use hastack_runtime::{Admin, BindError, HealthReport, bind_tcp};

pub use store::{MariaDbTarget, Post, Store};

/// Longest author name, in characters.
pub const MAX_AUTHOR: usize = 64;
/// Longest post body, in characters.
pub const MAX_BODY: usize = 2000;

/// Where the app keeps its data.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// The topology's MariaDB tier.
    MariaDb,
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
}

#[derive(Clone)]
struct AppState {
    store: Store,
    node: Arc<str>,
    posts_created: Counter,
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

fn db_error(e: &store::StoreError) -> Response {
    warn!(error = %e, "database error");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("database unavailable: {e}"),
    )
}

async fn create_post(State(st): State<AppState>, body: Bytes) -> Response {
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
    match st.store.create(&new.author, &new.body).await {
        Ok(post) => {
            st.posts_created.inc();
            (
                StatusCode::CREATED,
                [(
                    axum::http::header::LOCATION,
                    format!("/api/posts/{}", post.id),
                )],
                Json(post),
            )
                .into_response()
        }
        Err(e) => db_error(&e),
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
        Err(e) => db_error(&e),
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
        Err(e) => db_error(&e),
    }
}

async fn front_page(State(st): State<AppState>) -> Response {
    match st.store.list(50).await {
        Ok(posts) => Html(page::render(&posts, None)).into_response(),
        Err(e) => {
            warn!(error = %e, "database error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(page::render(
                    &[],
                    Some("The database is unavailable; try again in a moment."),
                )),
            )
                .into_response()
        }
    }
}

async fn form_post(State(st): State<AppState>, body: Bytes) -> Response {
    let parsed: Result<NewPost, _> = serde_urlencoded::from_bytes(&body);
    let new = match parsed
        .map_err(|e| e.to_string())
        .and_then(NewPost::validate)
    {
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
    match st.store.create(&new.author, &new.body).await {
        Ok(_) => {
            st.posts_created.inc();
            Redirect::to("/").into_response()
        }
        Err(e) => db_error(&e),
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

async fn health_report(store: &Store, node: &str) -> HealthReport {
    let (primary, replicas) = store.health().await;
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    let replicas: Vec<_> = replicas
        .iter()
        .map(|(n, r)| serde_json::json!({ "name": n, "status": show(r) }))
        .collect();
    HealthReport {
        healthy: primary.is_ok(),
        body: serde_json::json!({
            "node": node,
            "role": "app",
            "db": store.engine(),
            "primary": show(&primary),
            "replicas": replicas,
        }),
    }
}

/// The application's routes over `store`, answering as node `node`.
pub fn router(store: Store, node: &str, posts_created: Counter) -> Router {
    let state = AppState {
        store,
        node: node.into(),
        posts_created,
    };
    let served_by = HeaderValue::from_str(node).unwrap_or_else(|_| HeaderValue::from_static("app"));
    Router::new()
        .route("/", get(front_page))
        .route("/posts", axum::routing::post(form_post))
        .route("/api/posts", get(list_posts).post(create_post))
        .route("/api/posts/{id}", get(get_post))
        .route("/healthz", get(healthz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
        .layer(axum::middleware::map_response(move |mut resp: Response| {
            let served_by = served_by.clone();
            async move {
                resp.headers_mut().insert("x-served-by", served_by);
                resp
            }
        }))
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

    let deadline = Duration::from_secs(60);
    let started = Instant::now();
    // The primary may still be starting, and app nodes sharing an SQLite file may race
    // to create it: retry opening and migrating until a deadline.
    let store = loop {
        let attempt = async {
            let store = match &data {
                DataSource::Sqlite(path) => Store::sqlite(path).await?,
                DataSource::MariaDb => {
                    let target = |n: &hastack_config::Node| MariaDbTarget {
                        name: n.name.clone(),
                        host: n.address.to_string(),
                        port: topo.ports.db,
                    };
                    let primary = topo
                        .node(&topo.db.primary)
                        .map(target)
                        .ok_or_else(|| AppError::NotAnApp(name.to_string()))?;
                    let replicas: Vec<_> = topo
                        .tier(Role::Db)
                        .filter(|n| n.name != topo.db.primary)
                        .map(target)
                        .collect();
                    Store::mariadb(
                        &primary,
                        &replicas,
                        &topo.db.database,
                        &topo.db.user,
                        &topo.db.password,
                    )
                }
            };
            store.migrate().await?;
            Ok::<_, AppError>(store)
        };
        match attempt.await {
            Ok(store) => break store,
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
    let posts_created = Counter::default();
    registry.register(
        "hastack_app_posts_created",
        "Posts stored",
        posts_created.clone(),
    );
    let extra = store.stats().is_some().then(|| {
        let store = store.clone();
        Arc::new(move |out: &mut String| {
            if let Some(s) = store.stats() {
                out.push_str(&format!(
                    "# HELP hastack_app_replica_fallbacks Replica reads served by the primary instead.\n# TYPE hastack_app_replica_fallbacks counter\nhastack_app_replica_fallbacks_total {}\n",
                    s.replica_fallbacks.load(Ordering::Relaxed)
                ));
            }
        }) as hastack_runtime::MetricsExtra
    });
    let probe = {
        let store = store.clone();
        let name = name.to_string();
        Arc::new(move || {
            let store = store.clone();
            let name = name.clone();
            Box::pin(async move { health_report(&store, &name).await }) as _
        })
    };
    let admin = Admin::new(probe, registry, extra);
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));

    let app = router(store, name, posts_created);
    info!(node = name, addr = %service_addr, "app ready");
    let tokio_listener = listener;
    let serve = axum::serve(tokio_listener, app).with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    });
    if let Err(e) = serve.await {
        warn!(error = %e, "app server stopped with an error");
    }
    let _ = admin_task.await;
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
}
