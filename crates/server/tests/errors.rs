//! A table of bad requests, each with the status, error type, code and field OpenAI clients
//! expect; sent while another request streams, which must come out as if alone.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{app, post, send, send_json, streamed_text, Setup, MODEL};
use serde_json::{json, Value};

struct Case {
    what: &'static str,
    request: Request<Body>,
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
}

fn case(
    what: &'static str,
    request: Request<Body>,
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
) -> Case {
    Case { what, request, status, kind, code, param }
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const BAD: StatusCode = StatusCode::BAD_REQUEST;
const INVALID: &str = "invalid_request_error";

fn chat(extra: Value) -> String {
    let mut body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body.to_string()
}

/// Setup::default(): a context of 512 tokens and a body limit of 64 KiB.
fn cases() -> Vec<Case> {
    let too_long_ids: Vec<u32> = vec![28; 512];
    vec![
        case("malformed JSON", post(CHAT, r#"{"messages": ["#), BAD, INVALID, "invalid_json", None),
        case("trailing garbage", post(CHAT, format!("{} x", chat(json!({})))), BAD, INVALID, "invalid_json", None),
        case("not an object", post(CHAT, "[1, 2]"), BAD, INVALID, "invalid_json", None),
        case("empty body", post(CHAT, ""), BAD, INVALID, "invalid_json", None),
        case("missing messages", post(CHAT, "{}"), BAD, INVALID, "missing_required_parameter", Some("messages")),
        case("missing prompt", post(COMPLETIONS, "{}"), BAD, INVALID, "missing_required_parameter", Some("prompt")),
        case(
            "messages of the wrong type",
            post(CHAT, r#"{"messages": "hello"}"#),
            BAD,
            INVALID,
            "invalid_value",
            Some("messages"),
        ),
        case(
            "a message without a role",
            post(CHAT, r#"{"messages": [{"content": "hi"}]}"#),
            BAD,
            INVALID,
            "invalid_value",
            Some("messages[0]"),
        ),
        case("no messages", post(CHAT, r#"{"messages": []}"#), BAD, INVALID, "invalid_value", Some("messages")),
        case(
            "temperature of the wrong type",
            post(CHAT, chat(json!({"temperature": "hot"}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("temperature"),
        ),
        case(
            "messages sent to completions",
            post(COMPLETIONS, chat(json!({}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("messages"),
        ),
        case(
            "unknown model",
            post(CHAT, chat(json!({"model": "gpt-4o"}))),
            StatusCode::NOT_FOUND,
            INVALID,
            "model_not_found",
            Some("model"),
        ),
        case(
            "prompt as long as the context",
            post(COMPLETIONS, json!({"prompt": too_long_ids}).to_string()),
            BAD,
            INVALID,
            "context_length_exceeded",
            Some("prompt"),
        ),
        case(
            "prompt plus max_tokens past the context",
            post(CHAT, chat(json!({"max_tokens": 500}))),
            BAD,
            INVALID,
            "context_length_exceeded",
            Some("messages"),
        ),
        case(
            "negative temperature",
            post(CHAT, chat(json!({"temperature": -1}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("temperature"),
        ),
        case("top_p of 0", post(CHAT, chat(json!({"top_p": 0}))), BAD, INVALID, "invalid_value", Some("top_p")),
        case("min_p above 1", post(CHAT, chat(json!({"min_p": 1.5}))), BAD, INVALID, "invalid_value", Some("min_p")),
        case("top_k below -1", post(CHAT, chat(json!({"top_k": -2}))), BAD, INVALID, "invalid_value", Some("top_k")),
        case(
            "repetition_penalty of 0",
            post(CHAT, chat(json!({"repetition_penalty": 0}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("repetition_penalty"),
        ),
        case(
            "max_tokens of 0",
            post(CHAT, chat(json!({"max_tokens": 0}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("max_tokens"),
        ),
        case(
            "negative max_tokens",
            post(CHAT, chat(json!({"max_tokens": -5}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("max_tokens"),
        ),
        case(
            "seed not an integer",
            post(CHAT, chat(json!({"seed": 1.5}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("seed"),
        ),
        case("n of 3", post(CHAT, chat(json!({"n": 3}))), BAD, INVALID, "unsupported_parameter", Some("n")),
        case(
            "log probabilities",
            post(CHAT, chat(json!({"logprobs": true}))),
            BAD,
            INVALID,
            "unsupported_parameter",
            Some("logprobs"),
        ),
        case(
            "an image part",
            post(
                CHAT,
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
                    .to_string(),
            ),
            BAD,
            INVALID,
            "unsupported_parameter",
            Some("messages[0].content[0].type"),
        ),
        case(
            "an empty stop string",
            post(CHAT, chat(json!({"stop": ""}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("stop"),
        ),
        case(
            "a token id past the vocabulary",
            post(COMPLETIONS, json!({"prompt": [1, 4_000_000]}).to_string()),
            BAD,
            INVALID,
            "invalid_value",
            Some("prompt"),
        ),
        case(
            "an unknown attention",
            post(CHAT, chat(json!({"attention": "sparse"}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("attention"),
        ),
        case(
            "a HiP config that breaks an invariant",
            post(CHAT, chat(json!({"hip_config": {"k": 3}}))),
            BAD,
            INVALID,
            "invalid_value",
            Some("hip_config"),
        ),
        case(
            "a body over the limit",
            post(CHAT, chat(json!({"padding": "x".repeat(70_000)}))),
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID,
            "request_too_large",
            None,
        ),
        case(
            "an unknown route",
            post("/v1/embeddings", "{}"),
            StatusCode::NOT_FOUND,
            "not_found_error",
            "unknown_url",
            None,
        ),
        case("a wrong method", common::get(CHAT), StatusCode::METHOD_NOT_ALLOWED, INVALID, "method_not_allowed", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_disturb_nothing() {
    let app = app(&Setup::default());
    let good = json!({"model": MODEL, "prompt": "The sea was calm and", "max_tokens": 24, "seed": 3, "stream": true})
        .to_string();
    let (_, alone) = send(&app, post(COMPLETIONS, good.clone())).await;
    let alone = streamed_text(&alone);

    let background = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post(COMPLETIONS, good)).await }
    });
    for c in cases() {
        let (status, body) = send_json(&app, c.request).await;
        let error = &body["error"];
        assert_eq!(status, c.status, "{}: {body}", c.what);
        assert_eq!(error["type"], c.kind, "{}: {body}", c.what);
        assert_eq!(error["code"], c.code, "{}: {body}", c.what);
        assert_eq!(error["param"].as_str(), c.param, "{}: {body}", c.what);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: {body}", c.what);
    }
    let (status, during) = background.await.expect("the background request completes");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(streamed_text(&during), alone, "bad requests must not disturb a running one");
    assert_eq!(send(&app, common::get("/health")).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_recovers() {
    // 4 pages of 64 tokens. A holds one page and grows; B's 150-token prompt needs 3 pages
    // plus one spare for A, so B waits in the queue (bound 1) and C is refused.
    let setup = Setup { context_tokens: 256, kv_tokens: 256, page_size: 64, max_waiting: 1, ..Setup::default() };
    let app = app(&setup);
    let a = json!({"prompt": "Count: one", "max_tokens": 200, "ignore_eos": true, "stream": true}).to_string();
    let response = tower::ServiceExt::oneshot(app.clone(), post(COMPLETIONS, a)).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    common::wait_for_metric(&app, "infinihip_requests_running", 1.0, std::time::Duration::from_secs(10)).await;
    let b = json!({"prompt": vec![28u32; 150], "max_tokens": 4}).to_string();
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post(COMPLETIONS, b)).await }
    });
    common::wait_for_metric(&app, "infinihip_requests_waiting", 1.0, std::time::Duration::from_secs(10)).await;
    let (status, body) = send_json(&app, post(COMPLETIONS, json!({"prompt": "Hi", "max_tokens": 2}).to_string())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!((&body["error"]["type"], &body["error"]["code"]), (&json!("server_overloaded"), &json!("queue_full")));
    // A's client leaves: its pages free up, B runs and completes.
    drop(response);
    let (status, body) = waiting.await.expect("B completes");
    assert_eq!(status, StatusCode::OK, "{body}");
    common::wait_for_metric(&app, "infinihip_kv_pages_used", 0.0, std::time::Duration::from_secs(10)).await;
}
