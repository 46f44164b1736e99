//! Timing of device work with CUDA events, for `infinihip bench` (METHOD.md of the device
//! tool: events around the region, warm-up first, the median of many repetitions, cold L2).
//!
//! Before each timed repetition the L2 cache is flushed by clearing a buffer twice its size,
//! so that a kernel whose inputs would fit in L2 (HiP's few thousand selected keys) is timed as
//! it runs in a model, where the other layers evict them. Only the region between the two
//! events is timed, not the flush.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};

use crate::error::CudaError;
use crate::runtime::Gpu;

/// L2 flush buffer, start and end events.
pub struct Timer {
    flush: CudaSlice<u8>,
    start: CudaEvent,
    end: CudaEvent,
}

impl Timer {
    /// A timer whose flush buffer is `flush_bytes` (use at least twice the L2 size).
    pub fn new(gpu: &Gpu, flush_bytes: usize) -> Result<Self, CudaError> {
        let event = || gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT));
        Ok(Self {
            flush: gpu.alloc_zeros(flush_bytes)?,
            start: event().map_err(gpu.driver_err("creating a timing event"))?,
            end: event().map_err(gpu.driver_err("creating a timing event"))?,
        })
    }

    /// Runs `work` `warmup` times untimed, then `reps` times, each after an L2 flush, and
    /// returns the device time of each timed repetition in microseconds.
    pub fn time_us(
        &mut self,
        gpu: &Gpu,
        warmup: usize,
        reps: usize,
        mut work: impl FnMut() -> Result<(), CudaError>,
    ) -> Result<Vec<f64>, CudaError> {
        for _ in 0..warmup {
            work()?;
        }
        gpu.synchronize()?;
        let stream = gpu.stream();
        let err = gpu.driver_err("timing with events");
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            stream.memset_zeros(&mut self.flush).map_err(gpu.driver_err("flushing L2"))?;
            self.start.record(stream).map_err(&err)?;
            work()?;
            self.end.record(stream).map_err(&err)?;
            let ms = self
                .start
                .elapsed_ms(&self.end)
                .map_err(|source| CudaError::Sync { last_kernel: gpu.last_kernel(), source })?;
            times.push(f64::from(ms) * 1e3);
        }
        Ok(times)
    }
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}
