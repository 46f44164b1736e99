//! Shared by the server's integration tests: the model, an app built around it, and small
//! HTTP helpers that drive the router in-process (`oneshot`, no socket).

#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use infinihip_core::chat::ChatTemplate;
use infinihip_core::gguf::GgufFile;
use infinihip_core::tokenizer::Tokenizer;
use infinihip_engine::backend::cpu::CpuBackend;
use infinihip_engine::model::llama::Llama;
use infinihip_engine::sched::SchedulerOptions;
use infinihip_engine::{AttentionMode, Engine, EngineOptions};
use infinihip_server::{ApiConfig, ServerConfig};
use serde_json::Value;
use tower::ServiceExt;

/// The served model's name: the default model's file stem.
pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// `$INFINIHIP_MODEL`, else the default model in the user's cache; a clear failure when it is
/// not there.
pub fn model_path() -> PathBuf {
    infinihip_core::model_store::installed_model().unwrap_or_else(|e| panic!("{e}"))
}

/// Server settings for a test; small so that limits are easy to reach.
#[derive(Debug, Clone)]
pub struct Setup {
    pub context_tokens: usize,
    pub kv_tokens: usize,
    pub page_size: usize,
    pub step_tokens: usize,
    pub max_running: usize,
    pub max_waiting: usize,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            context_tokens: 512,
            kv_tokens: 2048,
            page_size: 16,
            step_tokens: 64,
            max_running: 64,
            max_waiting: 64,
            api_key: None,
            max_body_bytes: 64 << 10,
        }
    }
}

/// The router of a server on the default model, its engine thread started.
pub fn app(setup: &Setup) -> Router {
    try_app(setup).expect("the server starts")
}

/// `app`, or the configuration error.
pub fn try_app(setup: &Setup) -> Result<Router, infinihip_server::ServerError> {
    let file = Arc::new(GgufFile::open(model_path()).expect("the model opens"));
    let tokenizer = Tokenizer::from_gguf(file.metadata()).expect("tokenizer");
    let template = ChatTemplate::from_metadata(file.metadata()).expect("chat template");
    let model = Llama::load(file, CpuBackend::new(2).expect("threads")).expect("the model loads");
    let options = EngineOptions {
        page_size: setup.page_size,
        prefill_chunk: setup.step_tokens,
        kv_capacity_tokens: setup.kv_tokens,
    };
    let engine = Engine::new(model, options).expect("engine");
    let config = ServerConfig {
        api: ApiConfig {
            model_name: MODEL.to_string(),
            context_tokens: setup.context_tokens,
            default_max_tokens: None,
            api_key: setup.api_key.clone(),
            max_body_bytes: setup.max_body_bytes,
            default_attention: AttentionMode::Dense,
        },
        scheduler: SchedulerOptions {
            max_running: setup.max_running,
            max_waiting: setup.max_waiting,
            step_tokens: setup.step_tokens,
        },
    };
    infinihip_server::app(engine, tokenizer, template, config)
}

/// The tokenizer of the default model, to count tokens independently of the server.
pub fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(model_path()).expect("the model opens");
    Tokenizer::from_gguf(file.metadata()).expect("tokenizer")
}

pub fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(body.into()).expect("request")
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

/// Sends a request and reads the whole body.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("the body is readable").to_bytes();
    (status, String::from_utf8(bytes.to_vec()).expect("the body is UTF-8"))
}

/// Sends a request whose answer is JSON.
pub async fn send_json(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, text) = send(app, request).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string))
        .collect()
}

/// The text of a streamed completion or chat completion: the concatenated deltas.
pub fn streamed_text(body: &str) -> String {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "a stream ends with [DONE]: {body}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {d}")))
        .filter_map(|chunk| {
            let choice = chunk["choices"].get(0)?.clone();
            choice["text"].as_str().or(choice["delta"]["content"].as_str()).map(str::to_string)
        })
        .collect()
}

/// One value of the Prometheus text at `/metrics`.
pub async fn metric(app: &Router, line_start: &str) -> f64 {
    let (status, text) = send(app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric `{line_start}` in\n{text}"))
}

/// Polls `/metrics` until `line_start` has `value`, for at most `timeout`.
pub async fn wait_for_metric(app: &Router, line_start: &str, value: f64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let found = metric(app, line_start).await;
        if found == value {
            return;
        }
        assert!(start.elapsed() < timeout, "`{line_start}` is {found}, not {value}, after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
