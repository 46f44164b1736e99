//! The HTTP API: routes, handlers, the API-key check and the request log.
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/chat/completions` | chat template → tokens → engine; JSON or SSE |
//! | `POST /v1/completions` | raw prompt (text or ids) → engine; JSON or SSE |
//! | `GET /v1/models`, `GET /v1/models/{model}` | the one served model |
//! | `GET /health` | 200 while the engine thread runs, else 503 |
//! | `GET /metrics` | Prometheus text |
//!
//! Every error is an `ApiError` (OpenAI's JSON shape), including unknown routes, wrong
//! methods, bodies over the size limit and a missing API key. Layers, outermost first: the
//! request log (one line per request, written when the response body ends, so a stream is
//! logged with its full duration and outcome), the body size limit, then on `/v1` routes the
//! API-key check.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use http_body::{Frame, SizeHint};
use infinihip_core::chat::{ChatMessage, ChatTemplate};
use infinihip_core::tokenizer::Tokenizer;
use infinihip_engine::sched::{Event, GenerationRequest, SubmitError};
use infinihip_engine::AttentionMode;
use serde::Serialize;

use crate::error::{ApiError, ErrorCode};
use crate::listener::ClientAddr;
use crate::metrics::Metrics;
use crate::protocol::{
    finish_reason, parse_body, random_u64, sampling_error, AssistantMessage, ChatChoice, ChatChunkChoice,
    ChatCompletion, Chunk, Completion, CompletionChoice, Delta, Endpoint, Envelope, ModelCard, ModelList, PromptInput,
    RequestBody, Settings, UsageBody,
};
use crate::worker::{EngineHandle, EventReceiver, HandleError};

/// What the API serves and its limits.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The model's name in requests and `/v1/models` (the file stem).
    pub model_name: String,
    /// Most tokens a request may hold, prompt and completion together.
    pub context_tokens: usize,
    /// `max_tokens` of a request that names none; `None` = OpenAI's defaults (16 for
    /// completions, the rest of the context for chat).
    pub default_max_tokens: Option<usize>,
    /// When set, every `/v1` request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Attention of a request that names none.
    pub default_attention: AttentionMode,
}

/// OpenAI's default `max_tokens` for `/v1/completions`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    config: ApiConfig,
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    metrics: Arc<Metrics>,
    /// Start time, as `created` of the model card.
    created: u64,
}

impl AppState {
    pub fn new(
        config: ApiConfig,
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        template: ChatTemplate,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self(Arc::new(Shared { config, engine, tokenizer, template, metrics, created: unix_now() }))
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(get_model))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.0.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_route(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn same_secret(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn require_api_key(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &app.0.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            return ApiError::invalid_api_key().into_response();
        }
    }
    next.run(request).await
}

/// What a generation handler adds to its request's log line.
#[derive(Debug, Default)]
pub struct RequestNote {
    /// Set on admission: the engine's request id and the prompt length.
    admitted: Mutex<Option<String>>,
    /// Set when the response is complete: completion tokens and finish reason, or the error.
    outcome: Mutex<Option<String>>,
}

impl RequestNote {
    fn admitted(&self, text: String) {
        *self.admitted.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    fn outcome(&self, text: String) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    fn summary(&self) -> String {
        let admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (admitted, outcome) {
            (None, None) => String::new(),
            (Some(a), None) => format!(" {a} client disconnected"),
            (None, Some(o)) => format!(" {o}"),
            (Some(a), Some(o)) => format!(" {a} {o}"),
        }
    }
}

/// One request's log line, written once when the request is over.
struct LogLine {
    start: Instant,
    client: String,
    method: Method,
    path: String,
    /// `None` until the handler answers.
    status: Option<StatusCode>,
    note: Arc<RequestNote>,
}

impl LogLine {
    fn write(&self) {
        // 499, as nginx logs it: the client closed the connection before the answer.
        let status = self.status.map_or(499, |s| s.as_u16());
        eprintln!(
            "infinihip: {} {} {} {status} {:.3}s{}",
            self.client,
            self.method,
            self.path,
            self.start.elapsed().as_secs_f64(),
            self.note.summary()
        );
    }
}

/// Holds a log line until it is written: on drop, unless taken first.
struct PendingLog(Option<LogLine>);

impl Drop for PendingLog {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.write();
        }
    }
}

/// A response body that writes its request's log line when it is dropped: after the last
/// byte, or when the client goes away mid-stream.
struct LoggedBody {
    inner: Body,
    _log: PendingLog,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Logs every request in one line. If the client leaves before the handler answers (a
/// non-streaming generation), this future is dropped and the pending line is written then.
async fn log_request(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let client =
        request.extensions().get::<ConnectInfo<ClientAddr>>().map_or_else(|| "-".to_string(), |c| c.0 .0.to_string());
    let note = Arc::new(RequestNote::default());
    request.extensions_mut().insert(note.clone());
    let mut log = PendingLog(Some(LogLine {
        start: Instant::now(),
        client,
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        status: None,
        note: note.clone(),
    }));
    let response = next.run(request).await;
    let status = response.status();
    app.0.metrics.http_response(&route, status.as_u16());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        note.outcome(format!("error={code}"));
    }
    if let Some(line) = &mut log.0 {
        line.status = Some(status);
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, _log: log }))
}

async fn health(State(app): State<AppState>) -> Response {
    if app.0.engine.is_alive() {
        Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "engine stopped"}))).into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let mut response = app.0.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

fn model_card(app: &AppState) -> ModelCard {
    ModelCard {
        id: app.0.config.model_name.clone(),
        object: "model",
        created: app.0.created,
        owned_by: "infinihip",
        max_model_len: app.0.config.context_tokens,
    }
}

async fn list_models(State(app): State<AppState>) -> Json<ModelList> {
    Json(ModelList { object: "list", data: vec![model_card(&app)] })
}

async fn get_model(State(app): State<AppState>, Path(model): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    if model != app.0.config.model_name {
        return Err(ApiError::model_not_found(&model, &app.0.config.model_name));
    }
    Ok(Json(model_card(&app)))
}

fn read_body(body: Result<Bytes, BytesRejection>, app: &AppState) -> Result<RequestBody, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(app.0.config.max_body_bytes)
        } else {
            ApiError::invalid_json(r.body_text())
        }
    })?;
    parse_body(&bytes)
}

/// Runs CPU-heavy preparation (template rendering, tokenisation) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

async fn chat_completions(
    State(app): State<AppState>,
    Extension(note): Extension<Arc<RequestNote>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = read_body(body, &app)?;
    body.check_target(Endpoint::Chat, &app.0.config.model_name)?;
    let messages = body.chat_messages()?;
    let settings = body.settings(&app.0.config.default_attention)?;
    let shared = app.clone();
    let prompt = blocking(move || shared.chat_prompt(&messages)).await?;
    generate(&app, &note, Endpoint::Chat, prompt, settings, arrived).await
}

async fn completions(
    State(app): State<AppState>,
    Extension(note): Extension<Arc<RequestNote>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = read_body(body, &app)?;
    body.check_target(Endpoint::Completions, &app.0.config.model_name)?;
    let input = body.completion_prompt()?;
    let settings = body.settings(&app.0.config.default_attention)?;
    let prompt = match input {
        PromptInput::Ids(ids) => ids,
        PromptInput::Text(text) => {
            let tokenizer = app.0.tokenizer.clone();
            // Control tokens written in the prompt become their ids, as in a raw prompt to
            // llama.cpp or vLLM, so a client can send its own chat format.
            blocking(move || tokenizer.encode(&text, true).map_err(ApiError::internal)).await?
        }
    };
    generate(&app, &note, Endpoint::Completions, prompt, settings, arrived).await
}

impl AppState {
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
        let text = self.0.template.render(messages, true).map_err(|e| {
            ApiError::invalid_value("messages", format!("the chat template rejected the messages: {e}"))
        })?;
        self.0.tokenizer.encode(&text, true).map_err(ApiError::internal)
    }

    /// The engine request, after the context checks.
    fn generation_request(
        &self,
        endpoint: Endpoint,
        prompt: Vec<u32>,
        settings: &Settings,
    ) -> Result<GenerationRequest, ApiError> {
        let config = &self.0.config;
        let (param, endpoint_default) = match endpoint {
            Endpoint::Chat => ("messages", None),
            Endpoint::Completions => ("prompt", Some(COMPLETIONS_DEFAULT_MAX_TOKENS)),
        };
        let ctx = config.context_tokens;
        let n = prompt.len();
        if n == 0 {
            return Err(ApiError::invalid_value(param, "the prompt is empty (no tokens)"));
        }
        if n >= ctx {
            return Err(ApiError::context_length_exceeded(format!(
                "this model's maximum context length is {ctx} tokens, and the prompt has {n}: no room is left for the \
                 completion"
            ))
            .with_param(param));
        }
        let room = ctx - n;
        let max_tokens = match settings.max_tokens {
            Some(m) if m > room => {
                return Err(ApiError::context_length_exceeded(format!(
                    "this model's maximum context length is {ctx} tokens, but {} were requested ({n} in the prompt, \
                     {m} for the completion)",
                    n.saturating_add(m)
                ))
                .with_param(param))
            }
            Some(m) => m,
            None => config.default_max_tokens.or(endpoint_default).unwrap_or(room).min(room),
        };
        Ok(GenerationRequest {
            prompt,
            sampling: settings.sampling,
            max_tokens,
            stop_strings: settings.stop.clone(),
            stop_ids: if settings.ignore_eos { Vec::new() } else { self.0.tokenizer.stop_ids().to_vec() },
            attention: settings.attention.clone(),
        })
    }
}

fn refused(e: HandleError) -> ApiError {
    match e {
        HandleError::EngineStopped => ApiError::engine_unavailable(),
        HandleError::Refused(e) => match &e {
            SubmitError::QueueFull { .. } => {
                ApiError::queue_full(format!("the server is at capacity ({e}); retry later"))
            }
            SubmitError::TooLong { .. } => ApiError::context_length_exceeded(e.to_string()),
            SubmitError::Sampling(s) => sampling_error(s.clone()),
            SubmitError::NoTokensWanted => ApiError::invalid_value("max_tokens", e.to_string()),
            SubmitError::EmptyPrompt | SubmitError::TokenOutOfRange { .. } => {
                ApiError::invalid_value("prompt", e.to_string())
            }
            _ => ApiError::internal(e),
        },
    }
}

/// The parts of a response that depend on the endpoint.
#[derive(Debug, Clone)]
struct Shape {
    endpoint: Endpoint,
    envelope: Envelope,
}

impl Shape {
    fn new(endpoint: Endpoint, model: &str) -> Self {
        let (prefix, object) = match endpoint {
            Endpoint::Chat => ("chatcmpl", "chat.completion"),
            Endpoint::Completions => ("cmpl", "text_completion"),
        };
        let envelope = Envelope {
            id: format!("{prefix}-{:016x}", random_u64()),
            object,
            created: unix_now(),
            model: model.into(),
        };
        Self { endpoint, envelope }
    }

    fn full(&self, text: String, finish: &'static str, usage: UsageBody) -> Response {
        let envelope = self.envelope.clone();
        match self.endpoint {
            Endpoint::Chat => Json(ChatCompletion {
                envelope,
                choices: [ChatChoice {
                    index: 0,
                    message: AssistantMessage { role: "assistant", content: text },
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage,
            })
            .into_response(),
            Endpoint::Completions => Json(Completion {
                envelope,
                choices: [CompletionChoice { index: 0, text, logprobs: None, finish_reason: Some(finish) }],
                usage,
            })
            .into_response(),
        }
    }

    fn chunk_envelope(&self) -> Envelope {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        Envelope { object, ..self.envelope.clone() }
    }

    /// A stream chunk with one choice: `text` (or, for chat, the role on the first chunk) and
    /// the finish reason on the last.
    fn chunk(&self, role: bool, text: Option<String>, finish: Option<&'static str>) -> SseEvent {
        let envelope = self.chunk_envelope();
        match self.endpoint {
            Endpoint::Chat => {
                let delta = Delta { role: role.then_some("assistant"), content: text };
                sse_json(&Chunk {
                    envelope,
                    choices: vec![ChatChunkChoice { index: 0, delta, logprobs: None, finish_reason: finish }],
                    usage: None,
                })
            }
            Endpoint::Completions => sse_json(&Chunk {
                envelope,
                choices: vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage: None,
            }),
        }
    }

    fn usage_chunk(&self, usage: UsageBody) -> SseEvent {
        sse_json(&Chunk::<CompletionChoice> {
            envelope: self.chunk_envelope(),
            choices: Vec::new(),
            usage: Some(usage),
        })
    }
}

fn sse_json<T: Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_else(|e| ApiError::internal(e).to_json()))
}

async fn generate(
    app: &AppState,
    note: &Arc<RequestNote>,
    endpoint: Endpoint,
    prompt: Vec<u32>,
    settings: Settings,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let request = app.generation_request(endpoint, prompt, &settings)?;
    let prompt_tokens = request.prompt.len();
    let (id, events) = app.0.engine.submit(request, arrived).await.map_err(refused)?;
    note.admitted(format!("request={id} prompt_tokens={prompt_tokens}"));
    let shape = Shape::new(endpoint, &app.0.config.model_name);
    if settings.stream {
        let stream =
            EventStream { shape, events, include_usage: settings.include_usage, pending: VecDeque::new(), done: false };
        return Ok(Sse::new(stream.into_stream(note.clone())).keep_alive(KeepAlive::default()).into_response());
    }
    collect(shape, events, note).await
}

fn outcome_text(usage: &UsageBody, finish: &str) -> String {
    format!("completion_tokens={} finish={finish}", usage.completion_tokens)
}

async fn collect(shape: Shape, mut events: EventReceiver, note: &RequestNote) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match events.recv().await {
            Some(Event::Token { text: t, .. }) => text.push_str(&t),
            Some(Event::Finished { text: t, reason, usage, .. }) => {
                text.push_str(&t);
                let usage = UsageBody::from(usage);
                let finish = finish_reason(reason);
                note.outcome(outcome_text(&usage, finish));
                return Ok(shape.full(text, finish, usage));
            }
            Some(Event::Failed { error, .. }) => {
                note.outcome("failed".into());
                return Err(ApiError::internal(error));
            }
            None => return Err(ApiError::engine_unavailable()),
        }
    }
}

/// Engine events → SSE events of one request, ending with `data: [DONE]`.
struct EventStream {
    shape: Shape,
    events: EventReceiver,
    include_usage: bool,
    /// SSE events ready to send.
    pending: VecDeque<SseEvent>,
    done: bool,
}

impl EventStream {
    fn into_stream(mut self, note: Arc<RequestNote>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        if self.shape.endpoint == Endpoint::Chat {
            self.pending.push_back(self.shape.chunk(true, Some(String::new()), None));
        }
        futures_util::stream::unfold((self, note), |(mut s, note)| async move {
            loop {
                if let Some(event) = s.pending.pop_front() {
                    return Some((Ok(event), (s, note)));
                }
                if s.done {
                    return None;
                }
                s.next_events(&note).await;
            }
        })
    }

    async fn next_events(&mut self, note: &RequestNote) {
        match self.events.recv().await {
            Some(Event::Token { text, .. }) => {
                if !text.is_empty() {
                    self.pending.push_back(self.shape.chunk(false, Some(text), None));
                }
            }
            Some(Event::Finished { text, reason, usage, .. }) => {
                if !text.is_empty() {
                    self.pending.push_back(self.shape.chunk(false, Some(text), None));
                }
                let usage = UsageBody::from(usage);
                let finish = finish_reason(reason);
                let last = match self.shape.endpoint {
                    Endpoint::Chat => self.shape.chunk(false, None, Some(finish)),
                    Endpoint::Completions => self.shape.chunk(false, Some(String::new()), Some(finish)),
                };
                self.pending.push_back(last);
                if self.include_usage {
                    self.pending.push_back(self.shape.usage_chunk(usage));
                }
                self.finish(note, outcome_text(&usage, finish));
            }
            Some(Event::Failed { error, .. }) => {
                self.pending.push_back(SseEvent::default().data(ApiError::internal(error).to_json()));
                self.finish(note, "failed".into());
            }
            None => {
                self.pending.push_back(SseEvent::default().data(ApiError::engine_unavailable().to_json()));
                self.finish(note, "engine stopped".into());
            }
        }
    }

    fn finish(&mut self, note: &RequestNote, outcome: String) {
        note.outcome(outcome);
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}
