//! The engine thread: one std thread owns the `Engine` and the `Scheduler` and runs the step
//! loop; HTTP handlers reach it through an `EngineHandle`.
//!
//! Channels: submissions go over one std mpsc channel (the thread blocks on it when idle);
//! each request gets a tokio oneshot for the admission answer and an unbounded tokio channel
//! for its events (at most `max_tokens` + 1 of them). A handler that goes away drops its
//! receiver; before every step the thread cancels the requests whose receivers are gone, so a
//! client disconnect frees its KV pages within one step.
//!
//! A panic inside a step (a bug, never bad input: the scheduler checks requests on submit)
//! fails every request in flight, frees all pages, and the loop goes on serving. The thread
//! ends when every handle is dropped and the last request is done.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use infinihip_core::tokenizer::Tokenizer;
use infinihip_engine::backend::Backend;
use infinihip_engine::generate::FinishReason;
use infinihip_engine::sched::{Event, GenerationRequest, RequestId, Scheduler, SchedulerOptions, SubmitError};
use infinihip_engine::Engine;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use crate::metrics::{EngineGauges, Metrics, Outcome};

/// A request's events, as its handler receives them.
pub type EventReceiver = tokio_mpsc::UnboundedReceiver<Event>;

struct Submission {
    request: GenerationRequest,
    arrived: Instant,
    events: tokio_mpsc::UnboundedSender<Event>,
    reply: oneshot::Sender<Result<RequestId, SubmitError>>,
}

/// Why a submission got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("the engine thread has stopped")]
    EngineStopped,
    #[error(transparent)]
    Refused(#[from] SubmitError),
}

/// The handlers' side of the engine thread. Cloning is cheap.
#[derive(Clone)]
pub struct EngineHandle {
    submissions: mpsc::Sender<Submission>,
    alive: Arc<AtomicBool>,
}

/// Marks the engine as stopped when the thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl EngineHandle {
    /// Starts the engine thread.
    pub fn spawn<B: Backend + 'static>(
        engine: Engine<B>,
        tokenizer: Arc<Tokenizer>,
        options: SchedulerOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self>
    where
        Engine<B>: Send,
    {
        // The gauges are right from the start, before the thread runs.
        let pool = engine.pool();
        metrics.set_engine(EngineGauges {
            waiting: 0,
            running: 0,
            kv_pages_used: pool.used_pages(),
            kv_pages_free: pool.free_pages(),
        });
        let (submissions, inbox) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new().name("infinihip-engine".into()).spawn(move || {
            let _guard = guard;
            EngineLoop::new(engine, &tokenizer, options, metrics).run(&inbox);
        })?;
        Ok(Self { submissions, alive })
    }

    /// Whether the engine thread is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues a request; returns its id and the receiver of its events once the scheduler has
    /// accepted it. `arrived` is when the HTTP request came in (time to first token counts from
    /// there).
    pub async fn submit(
        &self,
        request: GenerationRequest,
        arrived: Instant,
    ) -> Result<(RequestId, EventReceiver), HandleError> {
        let (events, receiver) = tokio_mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.submissions
            .send(Submission { request, arrived, events, reply })
            .map_err(|_| HandleError::EngineStopped)?;
        let id = answer.await.map_err(|_| HandleError::EngineStopped)??;
        Ok((id, receiver))
    }
}

/// A request's client, as the engine thread sees it.
struct Client {
    events: tokio_mpsc::UnboundedSender<Event>,
    arrived: Instant,
    last_token: Option<Instant>,
}

struct EngineLoop<'t, B: Backend> {
    engine: Engine<B>,
    scheduler: Scheduler<'t>,
    clients: HashMap<RequestId, Client>,
    metrics: Arc<Metrics>,
}

impl<'t, B: Backend> EngineLoop<'t, B> {
    fn new(engine: Engine<B>, tokenizer: &'t Tokenizer, options: SchedulerOptions, metrics: Arc<Metrics>) -> Self {
        Self { engine, scheduler: Scheduler::new(tokenizer, options), clients: HashMap::new(), metrics }
    }

    fn run(mut self, inbox: &mpsc::Receiver<Submission>) {
        let mut open = true;
        while open || !self.scheduler.is_idle() {
            if self.scheduler.is_idle() {
                match inbox.recv() {
                    Ok(submission) => self.accept(submission),
                    Err(_) => break,
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(submission) => self.accept(submission),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.cancel_abandoned();
            self.step();
            self.publish_gauges();
        }
    }

    fn accept(&mut self, s: Submission) {
        let prompt_tokens = s.request.prompt.len();
        let result = self.scheduler.submit(&self.engine, s.request);
        if let Ok(id) = &result {
            self.metrics.prompt_tokens(prompt_tokens);
            self.clients.insert(*id, Client { events: s.events, arrived: s.arrived, last_token: None });
        }
        // A handler that stopped waiting for the answer is noticed by `cancel_abandoned`.
        let _ = s.reply.send(result);
    }

    /// Cancels the requests whose handlers dropped their receivers (client disconnects).
    fn cancel_abandoned(&mut self) {
        let gone: Vec<RequestId> =
            self.clients.iter().filter(|(_, c)| c.events.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            self.scheduler.cancel(&mut self.engine, id);
            self.clients.remove(&id);
            self.metrics.request_done(Outcome::Cancelled);
        }
    }

    fn step(&mut self) {
        let (engine, scheduler) = (&mut self.engine, &mut self.scheduler);
        let report = match catch_unwind(AssertUnwindSafe(|| scheduler.step(engine))) {
            Ok(report) => report,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                eprintln!(
                    "infinihip: internal error: the engine step panicked ({what}); failing every request in flight"
                );
                for id in self.scheduler.abort_all(&mut self.engine) {
                    self.deliver(Event::Failed { id, error: format!("internal error: {what}") });
                }
                return;
            }
        };
        self.metrics.preemptions(report.preempted.len());
        if !report.scheduled.is_empty() {
            self.metrics.step(report.scheduled.len());
        }
        // Finished requests have freed their pages: show it before their clients hear of it.
        self.publish_gauges();
        for event in report.events {
            self.deliver(event);
        }
    }

    /// Records an event's metrics and sends it to its client; a client that has gone away
    /// while its request runs is cancelled.
    fn deliver(&mut self, event: Event) {
        let now = Instant::now();
        let (id, sampled, outcome) = match &event {
            Event::Token { id, .. } => (*id, true, None),
            Event::Finished { id, reason, .. } => {
                let outcome = match reason {
                    FinishReason::Length => Outcome::Length,
                    FinishReason::StopToken | FinishReason::Stopped => Outcome::Stop,
                };
                // A stop token is sampled but makes no `Token` event.
                (*id, *reason == FinishReason::StopToken, Some(outcome))
            }
            Event::Failed { id, .. } => (*id, false, Some(Outcome::Error)),
        };
        let Some(client) = self.clients.get_mut(&id) else { return };
        if sampled {
            self.metrics.generation_tokens(1);
            match client.last_token {
                None => self.metrics.time_to_first_token(now - client.arrived),
                Some(last) => self.metrics.inter_token_latency(now - last),
            }
            client.last_token = Some(now);
        }
        match outcome {
            // Counted before the client hears of it, so that its next look at the metrics
            // includes it. A client gone by now misses nothing: the request is over.
            Some(outcome) => {
                self.metrics.request_done(outcome);
                let _ = client.events.send(event);
                self.clients.remove(&id);
            }
            None => {
                if client.events.send(event).is_err() {
                    self.scheduler.cancel(&mut self.engine, id);
                    self.clients.remove(&id);
                    self.metrics.request_done(Outcome::Cancelled);
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let pool = self.engine.pool();
        self.metrics.set_engine(EngineGauges {
            waiting: self.scheduler.waiting(),
            running: self.scheduler.running(),
            kv_pages_used: pool.used_pages(),
            kv_pages_free: pool.free_pages(),
        });
    }
}
