//! infinihip-server: the OpenAI-compatible HTTP API over the engine (docs/SERVER.md).
//!
//! Layout: `routes` (axum handlers, API key, request log) talks to `worker` (the engine
//! thread running `infinihip_engine::sched::Scheduler`) over channels; `protocol` is the wire
//! format, `error` the OpenAI error shape, `metrics` the Prometheus counters, `listener` the
//! connection bound.
//!
//! Use: `app(...)` loads nothing itself; it takes a ready engine, tokenizer and chat template,
//! starts the engine thread and returns the router. `serve` runs a router on a listener until
//! a shutdown future resolves; `run` does it all on a fresh runtime until Ctrl-C or SIGTERM.

pub mod error;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod routes;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use infinihip_core::chat::ChatTemplate;
use infinihip_core::tokenizer::Tokenizer;
use infinihip_engine::backend::Backend;
use infinihip_engine::sched::SchedulerOptions;
use infinihip_engine::Engine;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use routes::ApiConfig;

/// Everything `app` needs besides the model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub api: ApiConfig,
    pub scheduler: SchedulerOptions,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("invalid server configuration: {what}")]
    Config { what: String },
    #[error("starting the engine thread: {0}")]
    Spawn(std::io::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// Checks the configuration against the engine, starts the engine thread and returns the
/// router. The engine thread stops once the router (every clone of it) is dropped and the
/// requests in flight are done.
pub fn app<B: Backend + 'static>(
    engine: Engine<B>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    config: ServerConfig,
) -> Result<Router, ServerError>
where
    Engine<B>: Send,
{
    let pool = engine.pool();
    let kv_tokens = pool.capacity() * pool.layout().page_size;
    let checks = [
        (
            config.api.context_tokens >= 2,
            format!("the context ({}) must hold at least 2 tokens", config.api.context_tokens),
        ),
        (
            kv_tokens >= config.api.context_tokens,
            format!(
                "the KV cache ({kv_tokens} tokens) must hold at least one full context ({} tokens)",
                config.api.context_tokens
            ),
        ),
        (config.scheduler.max_waiting >= 1, "the queue bound must be at least 1".to_string()),
        (config.scheduler.max_running >= 1, "at least one request must be allowed to run".to_string()),
        (
            config.scheduler.max_running <= config.scheduler.step_tokens,
            format!(
                "{} requests may run but a step takes {} tokens: every running request must get its token each step",
                config.scheduler.max_running, config.scheduler.step_tokens
            ),
        ),
        (config.scheduler.step_tokens >= 1, "a step must take at least one token".to_string()),
        (config.api.max_body_bytes >= 1, "the body limit must be at least 1 byte".to_string()),
    ];
    if let Some((_, what)) = checks.into_iter().find(|(ok, _)| !ok) {
        return Err(ServerError::Config { what });
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let tokenizer = Arc::new(tokenizer);
    let handle = worker::EngineHandle::spawn(engine, tokenizer.clone(), config.scheduler, metrics.clone())
        .map_err(ServerError::Spawn)?;
    Ok(routes::router(routes::AppState::new(config.api, handle, tokenizer, template, metrics)))
}

/// Serves `router` on `listener`, holding at most `max_connections` connections open, until
/// `shutdown` resolves; then stops accepting and lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener::LimitedListener::new(listener, max_connections);
    axum::serve(listener, router.into_make_service_with_connect_info::<listener::ClientAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` and serves `router` on a new multi-threaded runtime until Ctrl-C or SIGTERM.
/// `on_listening` is told the bound address (the port may have been 0).
pub fn run(
    router: Router,
    addr: SocketAddr,
    max_connections: usize,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("infinihip-http")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(ServerError::Serve)?;
        on_listening(bound);
        serve(listener, router, max_connections, shutdown_signal()).await.map_err(ServerError::Serve)
    })
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    eprintln!("infinihip: shutting down: no new connections; finishing the requests in flight");
}
