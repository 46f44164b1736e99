//! The API on the default model, in-process: responses and streams in OpenAI's shape, stop
//! handling, models, health, metrics, client disconnects and the API key.

mod common;

use std::time::Duration;

use axum::http::{header, StatusCode};
use common::{
    app, get, metric, post, send, send_json, sse_data, streamed_text, tokenizer, wait_for_metric, Setup, MODEL,
};
use http_body_util::BodyExt;
use infinihip_core::chat::{ChatMessage, ChatTemplate};
use infinihip_core::gguf::GgufFile;
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_knows_the_capital_and_counts_its_tokens() {
    let app = app(&Setup::default());
    let prompt = "The capital of France is";
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 3, "temperature": 0}).to_string();
    let (status, json) = send_json(&app, post("/v1/completions", body)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["model"], MODEL);
    assert!(json["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
    let text = json["choices"][0]["text"].as_str().expect("text");
    assert!(text.starts_with(" Paris"), "{text:?}");
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    let prompt_tokens = tokenizer().encode(prompt, true).expect("encode").len();
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 3, "total_tokens": prompt_tokens + 3})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_renders_the_template_and_streams_the_same_text() {
    let app = app(&Setup::default());
    let messages =
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]);
    let request = |stream: bool| {
        json!({"messages": messages, "max_completion_tokens": 12, "seed": 42, "stream": stream,
               "stream_options": {"include_usage": true}})
        .to_string()
    };
    let (status, full) = send_json(&app, post("/v1/chat/completions", request(false))).await;
    assert_eq!(status, StatusCode::OK, "{full}");
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    let text = full["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    // The prompt is the GGUF's chat template rendered with a generation prompt.
    let file = GgufFile::open(common::model_path()).expect("the model opens");
    let template = ChatTemplate::from_metadata(file.metadata()).expect("template");
    let rendered = template
        .render(&[ChatMessage::new("system", "You are terse."), ChatMessage::new("user", "Name a colour.")], true)
        .expect("render");
    let prompt_tokens = tokenizer().encode(&rendered, true).expect("encode").len();
    assert_eq!(full["usage"]["prompt_tokens"], prompt_tokens);

    let (status, body) = send(&app, post("/v1/chat/completions", request(true))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(streamed_text(&body), text, "the same seed streams the same text");
    let chunks: Vec<Value> =
        sse_data(&body).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).expect("JSON")).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let usage = chunks.last().expect("a usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], full["usage"]);
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], full["choices"][0]["finish_reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text() {
    let app = app(&Setup::default());
    let body =
        |stop: Value| json!({"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": stop}).to_string();
    let (_, plain) = send_json(&app, post("/v1/completions", body(Value::Null))).await;
    let plain = plain["choices"][0]["text"].as_str().expect("text").to_string();
    let cut = plain.find(" 7").expect("the model counts on to 7");
    let (_, stopped) = send_json(&app, post("/v1/completions", body(json!([" 7", "never"])))).await;
    assert_eq!(stopped["choices"][0]["text"], plain[..cut]);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let app = app(&Setup::default());
    let (status, list) = send_json(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["max_model_len"], 512);
    let (status, card) = send_json(&app, get(&format!("/v1/models/{MODEL}"))).await;
    assert_eq!((status, &card["id"]), (StatusCode::OK, &json!(MODEL)));
    let (status, err) = send_json(&app, get("/v1/models/gpt-4")).await;
    assert_eq!((status, &err["error"]["code"]), (StatusCode::NOT_FOUND, &json!("model_not_found")));
    let (status, health) = send_json(&app, get("/health")).await;
    assert_eq!((status, health), (StatusCode::OK, json!({"status": "ok"})));

    let response = app.clone().oneshot(get("/metrics")).await.expect("answer");
    assert!(response.headers()[header::CONTENT_TYPE].to_str().is_ok_and(|t| t.starts_with("text/plain")));
    // 2048 KV tokens in pages of 16.
    assert_eq!(metric(&app, "infinihip_kv_pages_free").await, 128.0);
    assert_eq!(metric(&app, "infinihip_http_responses_total{route=\"/v1/models\",status=\"200\"}").await, 1.0);
    let (status, _) = send(&app, post("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2}).to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metric(&app, "infinihip_generation_tokens_total").await, 2.0);
    assert_eq!(metric(&app, "infinihip_time_to_first_token_seconds_count").await, 1.0);
    assert_eq!(metric(&app, "infinihip_inter_token_latency_seconds_count").await, 1.0);
    assert_eq!(metric(&app, "infinihip_requests_total{outcome=\"length\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_cancels_the_request_and_frees_its_pages() {
    let app = app(&Setup::default());
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true}).to_string();
    let response = app.clone().oneshot(post("/v1/completions", body)).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    // Wait for a generated token, so the request certainly holds pages.
    let mut seen = String::new();
    while !seen.contains("\"text\"") {
        let frame = stream.frame().await.expect("the stream goes on").expect("a frame");
        if let Some(data) = frame.data_ref() {
            seen.push_str(std::str::from_utf8(data).expect("UTF-8"));
        }
    }
    assert!(metric(&app, "infinihip_kv_pages_used").await > 0.0);
    assert_eq!(metric(&app, "infinihip_requests_running").await, 1.0);
    drop(stream);
    wait_for_metric(&app, "infinihip_kv_pages_used", 0.0, Duration::from_secs(10)).await;
    assert_eq!(metric(&app, "infinihip_requests_running").await, 0.0);
    assert_eq!(metric(&app, "infinihip_requests_total{outcome=\"cancelled\"}").await, 1.0);
    assert!(metric(&app, "infinihip_generation_tokens_total").await < 400.0, "generation stopped early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_on_v1_routes_when_set() {
    let app = app(&Setup { api_key: Some("s3cret".into()), ..Setup::default() });
    let with_key = |key: Option<&str>| {
        let mut request = get("/v1/models");
        if let Some(key) = key {
            request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {key}").parse().expect("header"));
        }
        request
    };
    for key in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let (status, err) = send_json(&app, with_key(key)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(
            (&err["error"]["type"], &err["error"]["code"]),
            (&json!("authentication_error"), &json!("invalid_api_key"))
        );
    }
    let (status, _) = send(&app, with_key(Some("s3cret"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = send_json(&app, post("/v1/chat/completions", "{}")).await;
    assert_eq!((status, &err["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("invalid_api_key")));
    // Health and metrics stay open to probes and scrapers.
    assert_eq!(send(&app, get("/health")).await.0, StatusCode::OK);
    assert_eq!(send(&app, get("/metrics")).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hip_attention_per_request_equals_dense_on_a_short_prompt() {
    // HiP attends to everything while the context fits in sink + window + k (DESIGN.md §4.1),
    // so greedy text must match dense; a broken per-request HiP path would not.
    let app = app(&Setup::default());
    let body = |extra: Value| {
        let prompt = "Painters mix paint on a palette. Red and yellow make orange, yellow and blue make green, \
                      and blue and red make purple. Mixing all of them gives a muddy brown. The three primary \
                      colours are";
        let mut body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        body.to_string()
    };
    let pruning = json!({"n_sink": 4, "n_window": 8, "chunk_sizes": [8, 4, 2], "stage_k": [16, 8], "k": 4,
                         "first_layers": {"k": null}, "query_group": [1, 1, 1], "refresh": [1, 1, 1]});
    let mut texts = Vec::new();
    for extra in [
        json!({}),
        json!({"attention": "hip"}),
        json!({"hip_preset": "fast", "hip_config": {"n_sink": 64}}),
        json!({"hip_config": pruning}),
    ] {
        let (status, json) = send_json(&app, post("/v1/completions", body(extra))).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        texts.push(json["choices"][0]["text"].as_str().expect("text").to_string());
    }
    assert!(!texts[0].is_empty());
    assert_eq!(texts[1], texts[0], "hip (default preset) vs dense");
    assert_eq!(texts[2], texts[0], "hip (fast, n_sink 64) vs dense");
    // A window of 8 and k = 4 over a 50-token prompt prunes for real: the request's own
    // settings reached the engine.
    assert_ne!(texts[3], texts[0], "a pruning HiP config must change the text");
}

#[test]
fn configurations_that_could_stall_are_refused() {
    let cases = [
        (Setup { context_tokens: 4096, kv_tokens: 2048, ..Setup::default() }, "must hold at least one full context"),
        (Setup { max_running: 65, step_tokens: 64, ..Setup::default() }, "must get its token each step"),
        (Setup { max_waiting: 0, ..Setup::default() }, "queue bound"),
    ];
    for (setup, expected) in cases {
        let err = common::try_app(&setup).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(expected), "{setup:?}: {err:?}");
    }
}
